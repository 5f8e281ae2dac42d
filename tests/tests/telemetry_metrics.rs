//! `/metrics` on the admin port: valid exposition format (checked by `promtool`), counters that
//! match known traffic, and every metric the Grafana dashboard queries is one the server exports.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use tiercache_proto::v1 as pb;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_testkit::req::{self, InNamespace};
use tiercache_testkit::{RedisServer, TestServer};

/// Sends `GET /metrics` (HTTP/1.1, connection closed after) and returns the status line's code,
/// the content type and the body.
async fn scrape(addr: SocketAddr) -> (u16, String, String) {
    let s = tiercache_testkit::scrape_metrics(addr, None).await.unwrap();
    (s.status, s.content_type, s.body)
}

/// One sample line: metric name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap();
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            (name.to_string(), labels, value.parse().unwrap())
        })
        .collect()
}

/// Sums the samples of `name` whose labels include every pair of `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| {
            n == name
                && with
                    .iter()
                    .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| v)
        .sum()
}

/// Runs `promtool check metrics` on `text` and returns its exit status and output.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: scripts/setup.sh installs it (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn metrics_endpoint_is_valid_and_counts_known_traffic() {
    let server = TestServer::memory().await;
    let admin = server.admin_addr().expect("metrics are on by default");
    let mut client = CacheServiceClient::new(server.channel());
    client.set(req::set("k", "v")).await.unwrap();
    for _ in 0..10 {
        let r = client.get(req::get("k")).await.unwrap().into_inner();
        assert_eq!(r.outcome, pb::GetOutcome::Hit as i32);
    }
    for i in 0..3 {
        let r = client
            .get(req::get(&format!("absent{i}")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.outcome, pb::GetOutcome::Miss as i32);
    }
    // An invalid request: counted with its status code.
    let bad = client
        .get(req::get("k").in_namespace("Not Valid"))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    let (code, content_type, text) = scrape(admin).await;
    assert_eq!(code, 200);
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let (ok, report) = promtool(&text);
    assert!(
        ok,
        "promtool check metrics failed:\n{report}\n--- scrape ---\n{text}"
    );

    let s = samples(&text);
    let ns = ("tiercache_namespace", "default");
    let lookups = "tiercache_cache_lookups_total";
    assert_eq!(
        sum(
            &s,
            lookups,
            &[ns, ("tiercache_tier", "l1"), ("tiercache_result", "hit")]
        ),
        10.0
    );
    assert_eq!(sum(&s, lookups, &[ns, ("tiercache_result", "miss")]), 3.0);
    assert_eq!(sum(&s, lookups, &[ns, ("tiercache_tier", "l2")]), 0.0);
    assert_eq!(
        sum(
            &s,
            "tiercache_cache_writes_total",
            &[ns, ("tiercache_kind", "set")]
        ),
        1.0
    );
    let get_method = ("rpc_method", "tiercache.v1.CacheService/Get");
    let calls = "rpc_server_call_duration_seconds_count";
    assert_eq!(
        sum(&s, calls, &[get_method, ns, ("tiercache_outcome", "hit")]),
        10.0
    );
    assert_eq!(
        sum(&s, calls, &[get_method, ns, ("tiercache_outcome", "miss")]),
        3.0
    );
    assert_eq!(
        sum(
            &s,
            calls,
            &[get_method, ("rpc_response_status_code", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    assert_eq!(
        sum(&s, calls, &[get_method, ("rpc_system_name", "grpc")]),
        14.0
    );
    // The sub-millisecond buckets are there.
    assert!(s
        .iter()
        .any(|(n, l, _)| n == "rpc_server_call_duration_seconds_bucket"
            && l.get("le").map(String::as_str) == Some("0.0001")));
    assert_eq!(sum(&s, "tiercache_l1_entries", &[ns]), 1.0);
    assert!(sum(&s, "tiercache_l1_size_bytes", &[ns]) > 0.0);
    // Memory-only mode: the namespace's budget is the shared l1.max_bytes.
    assert_eq!(sum(&s, "tiercache_l1_budget_bytes", &[ns]), 268435456.0);
    assert_eq!(sum(&s, "tiercache_degraded", &[]), 0.0);

    server.shutdown().await.unwrap();
}

/// Returns the metric names a PromQL expression uses: identifiers with our prefixes.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| {
            ["tiercache_", "rpc_server_", "db_client_"]
                .iter()
                .any(|p| t.starts_with(p))
        })
        .map(String::from)
        .collect()
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn dashboard_queries_only_exported_metrics() {
    let dashboard: serde_json::Value = serde_json::from_str(include_str!(
        "../../helm/tiercache/dashboards/tiercache.json"
    ))
    .expect("the dashboard is valid JSON");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    let used: std::collections::BTreeSet<String> =
        queries.iter().flat_map(|q| metric_names(q)).collect();
    assert!(
        used.len() >= 8,
        "the dashboard queries too little: {used:?}"
    );

    // Traffic through Redis so the Redis histogram has samples.
    let redis = RedisServer::start();
    let server = TestServer::with_redis(&redis.url()).await;
    let mut client = CacheServiceClient::new(server.channel());
    client.set(req::set("k", "v")).await.unwrap();
    client.get(req::get("k")).await.unwrap();
    client.get(req::get("absent")).await.unwrap();
    let (_, _, text) = scrape(server.admin_addr().unwrap()).await;
    let samples = samples(&text);
    let exported: std::collections::BTreeSet<String> =
        samples.iter().map(|(n, _, _)| n.clone()).collect();
    // Queries also name labels (`by (tiercache_namespace)`); those must exist too.
    let labels: std::collections::BTreeSet<String> = samples
        .iter()
        .flat_map(|(_, l, _)| l.keys().cloned())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(*n) && !labels.contains(*n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics the server does not export: {missing:?}\nexported: {exported:?}"
    );
    server.shutdown().await.unwrap();
}

/// The cumulative bucket counts of histogram `name` (`<name>_bucket`) whose series include
/// every label pair of `with`, summed per `le` and sorted by bound (`+Inf` last).
fn buckets(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Vec<(f64, f64)> {
    let mut by_le: BTreeMap<String, f64> = BTreeMap::new();
    for (n, labels, v) in samples {
        if n != &format!("{name}_bucket")
            || !with
                .iter()
                .all(|(k, val)| labels.get(*k).map(String::as_str) == Some(*val))
        {
            continue;
        }
        *by_le.entry(labels["le"].clone()).or_default() += v;
    }
    let mut out: Vec<(f64, f64)> = by_le
        .into_iter()
        .map(|(le, c)| {
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            (le, c)
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// What Prometheus's `histogram_quantile(q, …)` computes from cumulative buckets: linear
/// interpolation inside the bucket that holds rank `q × count` (the lower bound of the first
/// bucket is 0; a rank in the `+Inf` bucket gives the highest finite bound).
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    assert!(total > 0.0, "no observations in {buckets:?}");
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower;
            }
            return lower + (le - lower) * (rank - below) / (count - below);
        }
        (lower, below) = (le, count);
    }
    lower
}

/// The per-`le` difference of two cumulative bucket lists (what `increase()` over the two
/// scrapes would give).
fn bucket_increase(before: &[(f64, f64)], after: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|&(le, c)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
            (le, c - was)
        })
        .collect()
}

/// Starts a GetOrSet of `key` that gets the lease, and a second one that waits for it; fills
/// after `hold` and returns how long the waiter's call took (its outcome is FILLED).
async fn waiter_served_by_fill(
    client: &mut CacheServiceClient<tonic::transport::Channel>,
    key: &str,
    hold: std::time::Duration,
) -> std::time::Duration {
    let first = client
        .get_or_set(req::get_or_set(key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), pb::GetOrSetOutcome::Lease);
    let token = first.lease.unwrap().token;
    let mut waiter_client = client.clone();
    let key_owned = key.to_string();
    let waiter = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let r = waiter_client
            .get_or_set(req::get_or_set(&key_owned))
            .await
            .unwrap()
            .into_inner();
        (start.elapsed(), r.outcome())
    });
    tokio::time::sleep(hold).await;
    client.fill(req::fill(key, &token, "v")).await.unwrap();
    let (took, outcome) = waiter.await.unwrap();
    assert_eq!(outcome, pb::GetOrSetOutcome::Filled);
    took
}

/// Issue 19, finding 1: a 1.5 s call must land in a bucket near 1.5 s, not in "1 s to 10 s",
/// so its quantiles estimate it within 2× rather than at 5–10 s.
#[tokio::test]
async fn a_slow_call_lands_in_a_bucket_near_its_duration() {
    let server = TestServer::memory().await;
    let admin = server.admin_addr().unwrap();
    let mut client = CacheServiceClient::new(server.channel());
    let method = ("rpc_method", "tiercache.v1.CacheService/GetOrSet");
    let hist = "rpc_server_call_duration_seconds";
    // The lease holder's own (fast) GetOrSet is in the first scrape; the waiter's call is the
    // difference between the two.
    let first = client
        .get_or_set(req::get_or_set("warm"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), pb::GetOrSetOutcome::Lease);
    let first_token = first.lease.unwrap().token;
    client
        .fill(req::fill("warm", &first_token, "v"))
        .await
        .unwrap();
    // The lease holder's call for "slow" is counted before the first scrape too.
    let slow = client
        .get_or_set(req::get_or_set("slow"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(slow.outcome(), pb::GetOrSetOutcome::Lease);
    let token = slow.lease.unwrap().token;
    let before = buckets(&samples(&scrape(admin).await.2), hist, &[method]);
    let mut waiter_client = client.clone();
    let waiter = tokio::spawn(async move {
        let start = std::time::Instant::now();
        let r = waiter_client
            .get_or_set(req::get_or_set("slow"))
            .await
            .unwrap()
            .into_inner();
        (start.elapsed(), r.outcome())
    });
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    client.fill(req::fill("slow", &token, "v")).await.unwrap();
    let (took, outcome) = waiter.await.unwrap();
    assert_eq!(outcome, pb::GetOrSetOutcome::Filled);
    let after = buckets(&samples(&scrape(admin).await.2), hist, &[method]);
    let waiter_only = bucket_increase(&before, &after);
    let (p50, p99) = (
        histogram_quantile(0.5, &waiter_only),
        histogram_quantile(0.99, &waiter_only),
    );
    eprintln!(
        "a GetOrSet waiter that took {took:?}: p50 {p50:.3} s, p99 {p99:.3} s; buckets {waiter_only:?}"
    );
    let bucket = waiter_only
        .iter()
        .find(|b| b.1 >= 1.0)
        .expect("the call is counted")
        .0;
    assert!(
        bucket <= 2.5 && bucket >= took.as_secs_f64(),
        "the {took:?} call landed in the bucket le={bucket}: {waiter_only:?}"
    );
    assert!(
        p99 <= 2.0 * took.as_secs_f64(),
        "p99 {p99} s for one call of {took:?}"
    );
    // Every duration histogram has the same boundaries, from 100 µs to 30 s.
    let s = samples(&scrape(admin).await.2);
    let bounds: Vec<f64> = buckets(&s, hist, &[method]).iter().map(|b| b.0).collect();
    let chosen = tiercache_server::telemetry::DURATION_BUCKETS;
    assert_eq!(chosen[0], 0.0001);
    assert_eq!(chosen[chosen.len() - 1], 30.0);
    assert!(
        chosen.windows(2).all(|w| w[1] / w[0] <= 2.5 + 1e-9),
        "{chosen:?}"
    );
    let mut want = chosen.to_vec();
    want.push(f64::INFINITY);
    assert_eq!(bounds, want);
    server.shutdown().await.unwrap();
}

/// Issue 19, finding 6: lock RPCs carry the namespace label like cache RPCs, in memory-only
/// and two-tier mode, so they stay on the RPC panels when a namespace is chosen.
#[tokio::test]
async fn lock_rpcs_carry_the_namespace_label() {
    use tiercache_proto::v1::lock_service_client::LockServiceClient;
    let redis = RedisServer::start();
    for server in [
        TestServer::memory().await,
        TestServer::with_redis(&redis.url()).await,
    ] {
        let mut locks = LockServiceClient::new(server.channel());
        let ttl = std::time::Duration::from_secs(10);
        let got = locks
            .acquire_lock(req::acquire_lock("nightly", ttl, std::time::Duration::ZERO))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.outcome(), pb::AcquireLockOutcome::Acquired);
        locks
            .renew_lock(req::renew_lock("nightly", &got.owner_token, ttl))
            .await
            .unwrap();
        // A contended acquisition that waits and gives up, one that waits and gets the lock
        // when it is released, and a lock in a namespace created by the lock call itself.
        let busy = locks
            .acquire_lock(req::acquire_lock(
                "nightly",
                ttl,
                std::time::Duration::from_millis(100),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_ne!(busy.outcome(), pb::AcquireLockOutcome::Acquired);
        let mut waiter = locks.clone();
        let waiting = tokio::spawn(async move {
            waiter
                .acquire_lock(req::acquire_lock(
                    "nightly",
                    ttl,
                    std::time::Duration::from_secs(5),
                ))
                .await
                .unwrap()
                .into_inner()
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        locks
            .release_lock(req::release_lock("nightly", &got.owner_token))
            .await
            .unwrap();
        let second = waiting.await.unwrap();
        assert_eq!(second.outcome(), pb::AcquireLockOutcome::Acquired);
        locks
            .release_lock(req::release_lock("nightly", &second.owner_token))
            .await
            .unwrap();
        let other = locks
            .acquire_lock(
                req::acquire_lock("job", ttl, std::time::Duration::ZERO).in_namespace("jobs"),
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(other.outcome(), pb::AcquireLockOutcome::Acquired);
        let s = samples(&scrape(server.admin_addr().unwrap()).await.2);
        let acquire = ("rpc_method", "tiercache.v1.LockService/AcquireLock");
        let calls = "rpc_server_call_duration_seconds_count";
        assert_eq!(
            sum(&s, calls, &[acquire, ("tiercache_namespace", "default")]),
            3.0
        );
        assert_eq!(
            sum(&s, calls, &[acquire, ("tiercache_namespace", "jobs")]),
            1.0
        );
        assert_eq!(
            sum(
                &s,
                calls,
                &[
                    ("rpc_method", "tiercache.v1.LockService/ReleaseLock"),
                    ("tiercache_namespace", "default")
                ]
            ),
            2.0
        );
        for method in ["AcquireLock", "RenewLock", "ReleaseLock"] {
            let method = format!("tiercache.v1.LockService/{method}");
            let (with_ns, without): (Vec<&Sample>, Vec<&Sample>) = s
                .iter()
                .filter(|(n, l, _)| n == calls && l.get("rpc_method") == Some(&method))
                .partition(|(_, l, _)| l.contains_key("tiercache_namespace"));
            assert!(!with_ns.is_empty(), "no {method} with its namespace label");
            assert!(
                without.is_empty(),
                "{method} without its namespace label: {without:?}"
            );
        }
        server.shutdown().await.unwrap();
    }
}

/// Issue 19, finding 7: a GetOrSet served by another caller's fill counts as its own result,
/// `tiercache_cache_lookups_total{tiercache_result="filled"}`, not as a miss.
#[tokio::test]
async fn get_or_set_served_by_a_fill_counts_as_filled() {
    let redis = RedisServer::start();
    for server in [
        TestServer::memory().await,
        TestServer::with_redis(&redis.url()).await,
    ] {
        let mut client = CacheServiceClient::new(server.channel());
        waiter_served_by_fill(&mut client, "k", std::time::Duration::from_millis(200)).await;
        let s = samples(&scrape(server.admin_addr().unwrap()).await.2);
        let ns = ("tiercache_namespace", "default");
        let lookups = "tiercache_cache_lookups_total";
        // The lease holder's lookup was the miss; the waiter's was served by its fill.
        assert_eq!(sum(&s, lookups, &[ns, ("tiercache_result", "miss")]), 1.0);
        assert_eq!(
            sum(
                &s,
                lookups,
                &[
                    ns,
                    ("tiercache_tier", "none"),
                    ("tiercache_result", "filled")
                ]
            ),
            1.0
        );
        assert_eq!(sum(&s, lookups, &[ns]), 2.0);
        server.shutdown().await.unwrap();
    }
}

/// The value of the one sample of `name` whose labels are exactly `labels` (plus the scope
/// label), or `None` when the series is not exported.
fn series(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len() + 1
                && l.get("otel_scope_name").map(String::as_str) == Some("tiercache")
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

/// Issue 19, finding 2: the series a dashboard or alert rates exist at 0 before their first
/// event, so `increase()` over two scrapes counts that first event (a series born at 1 counts
/// 0), and the Redis-errors panel shows 0 rather than "No data" while Redis is healthy.
#[tokio::test]
async fn series_exist_at_zero_so_the_first_event_counts() {
    let redis = RedisServer::start();
    let server = TestServer::with_redis(&redis.url()).await;
    let admin = server.admin_addr().unwrap();
    let requests = "tiercache_rpc_requests_total";
    let flush = [
        ("rpc_method", "tiercache.v1.CacheService/FlushNamespace"),
        ("rpc_response_status_code", "OK"),
        ("tiercache_namespace", "default"),
    ];
    let invalid_get = [
        ("rpc_method", "tiercache.v1.CacheService/Get"),
        ("rpc_response_status_code", "INVALID_ARGUMENT"),
    ];
    let before = samples(&scrape(admin).await.2);
    // RPCs by method, status and namespace, for every code the server answers with.
    for (method, ns) in [
        ("tiercache.v1.CacheService/FlushNamespace", Some("default")),
        ("tiercache.v1.CacheService/InvalidateTags", Some("default")),
        ("tiercache.v1.CacheService/Delete", Some("default")),
        ("tiercache.v1.LockService/AcquireLock", Some("default")),
        ("tiercache.v1.CacheService/Get", None),
        ("tiercache.v1.AdminService/ListNamespaces", None),
    ] {
        for code in [
            "OK",
            "INVALID_ARGUMENT",
            "NOT_FOUND",
            "UNAVAILABLE",
            "RESOURCE_EXHAUSTED",
            "DEADLINE_EXCEEDED",
            "CANCELLED",
            "INTERNAL",
        ] {
            let mut labels = vec![("rpc_method", method), ("rpc_response_status_code", code)];
            if let Some(ns) = ns {
                labels.push(("tiercache_namespace", ns));
            }
            assert_eq!(
                series(&before, requests, &labels),
                Some(0.0),
                "{requests} {labels:?} is not there at 0"
            );
        }
    }
    // Redis errors by operation and kind, at 0 while Redis is healthy.
    for op in ["read", "set", "flush", "acquire_lock", "health_check"] {
        for kind in ["unavailable", "redis_error"] {
            let labels = [("tiercache_redis_operation", op), ("error_type", kind)];
            assert_eq!(
                series(&before, "tiercache_redis_errors_total", &labels),
                Some(0.0),
                "tiercache_redis_errors_total {labels:?} is not there at 0"
            );
        }
    }
    // Per-namespace results, `filled` included.
    for result in ["hit", "stale", "miss", "filled"] {
        assert!(
            before
                .iter()
                .any(|(n, l, v)| n == "tiercache_cache_lookups_total"
                    && l.get("tiercache_result").map(String::as_str) == Some(result)
                    && l.get("tiercache_namespace").map(String::as_str) == Some("default")
                    && *v == 0.0),
            "no lookups series for {result} at 0"
        );
    }

    let mut client = CacheServiceClient::new(server.channel());
    client.flush_namespace(req::flush()).await.unwrap();
    for _ in 0..3 {
        let bad = client
            .get(req::get("k").in_namespace("Not Valid"))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    }
    let after = samples(&scrape(admin).await.2);
    // What `increase()` over the two scrapes gives.
    let increase = |labels: &[(&str, &str)]| {
        series(&after, requests, labels).unwrap_or(0.0)
            - series(&before, requests, labels).unwrap_or(0.0)
    };
    assert_eq!(increase(&flush), 1.0);
    assert_eq!(increase(&invalid_get), 3.0);
    server.shutdown().await.unwrap();
}
