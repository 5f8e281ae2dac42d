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
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends `GET /metrics` (HTTP/1.1, connection closed after) and returns the status line's code,
/// the content type and the body.
async fn scrape(addr: SocketAddr) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: tiercache\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8(raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    let code = head.split(' ').nth(1).unwrap().parse().unwrap();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .unwrap_or_default()
        .to_string();
    (code, content_type, body.to_string())
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
