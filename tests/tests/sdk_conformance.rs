//! The Rust runner of the language-neutral SDK conformance cases in `tests/conformance/` (the
//! format is in its README; `sdks/python/tests/test_conformance.py` runs the same cases). Raw
//! protocol steps go through the generated stubs, `sdk_get_or_set` through the Rust SDK.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Map, Value};
use tiercache_client::GetOrSetOptions;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_testkit::{RedisServer, TestServer};
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Result<T> = std::result::Result<T, tonic::Status>;

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conformance");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    out.sort();
    assert!(
        out.len() >= 10,
        "too few conformance cases in {}",
        dir.display()
    );
    out
}

fn ms(step: &Value, name: &str) -> Option<Duration> {
    step.get(name)
        .and_then(Value::as_u64)
        .map(Duration::from_millis)
}

fn pb_ms(step: &Value, name: &str) -> Option<prost_types::Duration> {
    ms(step, name).map(tiercache_proto::duration::to_proto)
}

fn s<'a>(step: &'a Value, name: &str) -> &'a str {
    step.get(name).and_then(Value::as_str).unwrap_or_default()
}

fn strings(step: &Value, name: &str) -> Vec<String> {
    step.get(name)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn entry(e: Option<&pb::Entry>) -> Map<String, Value> {
    let mut m = Map::new();
    match e {
        None => {
            m.insert("value".into(), Value::Null);
        }
        Some(e) => {
            let value = if e.absent {
                Value::Null
            } else {
                Value::String(String::from_utf8_lossy(&e.value).into_owned())
            };
            m.insert("value".into(), value);
            m.insert("absent".into(), json!(e.absent));
            m.insert("stale".into(), json!(e.stale));
            m.insert("version".into(), json!(e.version));
        }
    }
    m
}

fn snake(code: tonic::Code) -> String {
    let camel = format!("{code:?}");
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn error(status: &tonic::Status) -> Value {
    let field = status
        .get_details_bad_request()
        .and_then(|b| b.field_violations.first().map(|v| v.field.clone()));
    let reason = status.get_details_error_info().map(|i| i.reason);
    json!({"error": snake(status.code()), "field": field, "reason": reason})
}

/// What every step needs: the two clients' channels and the case's namespace.
#[derive(Clone)]
struct Ctx {
    channels: [Channel; 2],
    endpoints: [String; 2],
    ns: String,
}

impl Ctx {
    fn cache(&self, step: &Value) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.channels[client_of(step)].clone())
    }
}

fn client_of(step: &Value) -> usize {
    step.get("client").and_then(Value::as_u64).unwrap_or(0) as usize
}

async fn one(ctx: Ctx, step: Value) -> Value {
    match call(&ctx, &step).await {
        Ok(v) => v,
        Err(status) => error(&status),
    }
}

async fn call(ctx: &Ctx, st: &Value) -> Result<Value> {
    let ns = ctx.ns.clone();
    let key = s(st, "key").to_string();
    let mut cache = ctx.cache(st);
    let out = match s(st, "op") {
        "set" => {
            let condition = if st.get("if_absent").and_then(Value::as_bool) == Some(true) {
                Some(pb::write_condition::Condition::IfAbsent(true))
            } else {
                st.get("if_version")
                    .and_then(Value::as_u64)
                    .map(pb::write_condition::Condition::IfVersion)
            };
            let r = cache
                .set(pb::SetRequest {
                    namespace: ns,
                    key,
                    value: Bytes::from(s(st, "value").to_string()),
                    ttl: pb_ms(st, "ttl_ms"),
                    stale_ttl: pb_ms(st, "stale_ttl_ms"),
                    tags: strings(st, "tags"),
                    condition: condition.map(|c| pb::WriteCondition { condition: Some(c) }),
                })
                .await?
                .into_inner();
            let outcome = match r.outcome() {
                pb::SetOutcome::Stored => "stored",
                pb::SetOutcome::Exists => "exists",
                pb::SetOutcome::VersionMismatch => "version_mismatch",
                pb::SetOutcome::Unspecified => "unspecified",
            };
            json!({"outcome": outcome, "version": r.version})
        }
        "get" => {
            let r = cache
                .get(pb::GetRequest {
                    namespace: ns,
                    key,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut m = entry(r.entry.as_ref());
            let outcome = match r.outcome() {
                pb::GetOutcome::Hit => "hit",
                pb::GetOutcome::Miss => "miss",
                _ => "other",
            };
            m.insert("outcome".into(), json!(outcome));
            Value::Object(m)
        }
        "delete" => {
            let r = cache
                .delete(pb::DeleteRequest {
                    namespace: ns,
                    key,
                    if_version: st.get("if_version").and_then(Value::as_u64),
                })
                .await?
                .into_inner();
            let outcome = match r.outcome() {
                pb::DeleteOutcome::Deleted => "deleted",
                pb::DeleteOutcome::NotFound => "not_found",
                pb::DeleteOutcome::VersionMismatch => "version_mismatch",
                pb::DeleteOutcome::Unspecified => "unspecified",
            };
            json!({"outcome": outcome})
        }
        "get_or_set" => {
            let action = if s(st, "on_wait_timeout") == "unavailable" {
                pb::WaitTimeoutAction::Unavailable
            } else {
                pb::WaitTimeoutAction::Compute
            };
            let allow_stale = st.get("allow_stale").and_then(Value::as_bool) != Some(false);
            let refresh = st.get("refresh_stale").and_then(Value::as_bool) != Some(false);
            let r = cache
                .get_or_set(pb::GetOrSetRequest {
                    namespace: ns,
                    key,
                    max_wait: pb_ms(st, "max_wait_ms"),
                    allow_stale,
                    refresh_stale: allow_stale && refresh,
                    on_wait_timeout: action as i32,
                    lease_ttl: None,
                })
                .await?
                .into_inner();
            let mut m = entry(r.entry.as_ref());
            let outcome = match r.outcome() {
                pb::GetOrSetOutcome::Hit => "hit",
                pb::GetOrSetOutcome::Lease => "lease",
                pb::GetOrSetOutcome::Filled => "filled",
                pb::GetOrSetOutcome::Compute => "compute",
                pb::GetOrSetOutcome::Unspecified => "unspecified",
            };
            m.insert("outcome".into(), json!(outcome));
            m.insert("lease".into(), json!(r.lease.map(|l| l.token)));
            Value::Object(m)
        }
        "fill" => {
            let r = cache
                .fill(pb::FillRequest {
                    namespace: ns,
                    key,
                    lease_token: s(st, "lease").to_string(),
                    value: Bytes::from(s(st, "value").to_string()),
                    ttl: pb_ms(st, "ttl_ms"),
                    stale_ttl: None,
                    tags: strings(st, "tags"),
                    absent: st.get("absent").and_then(Value::as_bool) == Some(true),
                })
                .await?
                .into_inner();
            let outcome = match r.outcome() {
                pb::FillOutcome::Stored => "stored",
                pb::FillOutcome::LeaseRevoked => "lease_revoked",
                pb::FillOutcome::LeaseExpired => "lease_expired",
                pb::FillOutcome::Unspecified => "unspecified",
            };
            json!({"outcome": outcome})
        }
        "release_lease" => {
            let r = cache
                .release_lease(pb::ReleaseLeaseRequest {
                    namespace: ns,
                    key,
                    lease_token: s(st, "lease").to_string(),
                })
                .await?
                .into_inner();
            let outcome = match r.outcome() {
                pb::ReleaseLeaseOutcome::Released => "released",
                pb::ReleaseLeaseOutcome::NotHeld => "not_held",
                pb::ReleaseLeaseOutcome::Unspecified => "unspecified",
            };
            json!({"outcome": outcome})
        }
        "invalidate_tags" => {
            cache
                .invalidate_tags(pb::InvalidateTagsRequest {
                    namespace: ns,
                    tags: strings(st, "tags"),
                })
                .await?;
            json!({})
        }
        "flush" => {
            cache
                .flush_namespace(pb::FlushNamespaceRequest { namespace: ns })
                .await?;
            json!({})
        }
        "inspect" => {
            let mut admin = AdminServiceClient::new(ctx.channels[client_of(st)].clone());
            let r = admin
                .inspect(pb::InspectRequest { namespace: ns, key })
                .await?
                .into_inner();
            json!({"lease_held": r.lease_held})
        }
        "sdk_get_or_set" => sdk_get_or_set(ctx, st).await,
        "sleep" => {
            tokio::time::sleep(ms(st, "ms").unwrap_or_default()).await;
            json!({})
        }
        op => panic!("unknown op {op}"),
    };
    Ok(out)
}

/// The loader's own failure, kept apart from the SDK's errors.
#[derive(Debug)]
enum RunError {
    Loader,
    Sdk(tiercache_client::Error),
}

impl From<tiercache_client::Error> for RunError {
    fn from(e: tiercache_client::Error) -> Self {
        RunError::Sdk(e)
    }
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Loader => f.write_str("loader failed"),
            RunError::Sdk(e) => write!(f, "{e}"),
        }
    }
}

async fn sdk_get_or_set(ctx: &Ctx, st: &Value) -> Value {
    let client = tiercache_client::Client::connect(ctx.endpoints[client_of(st)].clone())
        .await
        .expect("sdk client connects");
    let ns = client.namespace(ctx.ns.clone());
    let calls = Arc::new(AtomicU64::new(0));
    let loader = st.get("loader").cloned().unwrap_or(Value::Null);
    let opts = GetOrSetOptions {
        ttl: ms(st, "ttl_ms"),
        tags: strings(st, "tags"),
        ..GetOrSetOptions::default()
    };
    let counter = Arc::clone(&calls);
    let r = ns
        .get_or_set(s(st, "key").to_string(), opts, move || async move {
            counter.fetch_add(1, Ordering::SeqCst);
            if loader.get("raise").and_then(Value::as_bool) == Some(true) {
                return Err(RunError::Loader);
            }
            if loader.get("none").and_then(Value::as_bool) == Some(true) {
                return Ok(None);
            }
            Ok(Some(Bytes::from(s(&loader, "value").to_string())))
        })
        .await;
    let n = calls.load(Ordering::SeqCst);
    match r {
        Ok(v) => {
            let value = v.map(|b| String::from_utf8_lossy(&b).into_owned());
            json!({"value": value, "loader_calls": n})
        }
        Err(RunError::Loader) => json!({"error": "loader", "loader_calls": n}),
        Err(RunError::Sdk(e)) => json!({"error": snake(e.code()), "loader_calls": n}),
    }
}

/// Replaces `"$NAME"` arguments with the saved variables.
fn resolve(step: &Value, vars: &HashMap<String, Value>) -> Value {
    let mut out = step.clone();
    if let Some(obj) = out.as_object_mut() {
        for (k, v) in obj.iter_mut() {
            if k == "expect" || k == "save" {
                continue;
            }
            if let Some(name) = v.as_str().and_then(|s| s.strip_prefix('$')) {
                *v = vars.get(name).cloned().unwrap_or(Value::Null);
            }
        }
    }
    out
}

async fn run_case(path: &Path, ctx: Ctx) {
    let text = std::fs::read_to_string(path).unwrap();
    let case: Value = serde_json::from_str(&text).unwrap();
    let mut vars: HashMap<String, Value> = HashMap::new();
    let mut background: HashMap<String, JoinHandle<Value>> = HashMap::new();
    let steps = case["steps"].as_array().expect("steps");
    for (i, raw) in steps.iter().enumerate() {
        let step = resolve(raw, &vars);
        let where_ = format!("{} step {i} ({})", path.display(), s(&step, "op"));
        let result = if s(&step, "op") == "await" {
            let handle = background
                .remove(s(&step, "name"))
                .expect("await names a background step");
            tokio::time::timeout(Duration::from_secs(30), handle)
                .await
                .expect("background step finishes")
                .expect("background step does not panic")
        } else if let Some(name) = step.get("background").and_then(Value::as_str) {
            background.insert(
                name.to_string(),
                tokio::spawn(one(ctx.clone(), step.clone())),
            );
            continue;
        } else {
            let mut result = one(ctx.clone(), step.clone()).await;
            // Another replica's change reaches this one through pub/sub: read again a while.
            let eventually = step.get("eventually").and_then(Value::as_bool) == Some(true);
            let deadline = Instant::now() + Duration::from_secs(5);
            while eventually
                && mismatch(&step, &result, &vars).is_some()
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
                result = one(ctx.clone(), step.clone()).await;
            }
            result
        };
        if let Some(save) = step.get("save").and_then(Value::as_object) {
            for (name, field) in save {
                let v = result.get(field.as_str().unwrap()).cloned();
                vars.insert(name.clone(), v.unwrap_or(Value::Null));
            }
        }
        if let Some(problem) = mismatch(&step, &result, &vars) {
            panic!("{where_}: {problem}");
        }
    }
}

/// Why `result` does not meet the step's `expect`, or `None` when it does.
fn mismatch(step: &Value, result: &Value, vars: &HashMap<String, Value>) -> Option<String> {
    let expect = step.get("expect").and_then(Value::as_object);
    for (field, want) in expect.into_iter().flatten() {
        let want = match want.as_str().and_then(|s| s.strip_prefix('$')) {
            Some(name) => vars.get(name).cloned().unwrap_or(Value::Null),
            None => want.clone(),
        };
        if result.get(field) != Some(&want) {
            return Some(format!("{field} is not {want} in {result}"));
        }
    }
    let expects_error = expect.is_some_and(|e| e.contains_key("error"));
    if result.get("error").is_some() && !expects_error {
        return Some(format!("unexpected error {result}"));
    }
    None
}

async fn run_all(mode: &str, servers: &[&TestServer; 2]) {
    for (n, path) in cases().iter().enumerate() {
        let case: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let modes: Vec<String> = strings(&case, "modes");
        if !modes.iter().any(|m| m == mode) {
            continue;
        }
        let stem = path
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .replace('_', "-");
        let ctx = Ctx {
            channels: [servers[0].channel(), servers[1].channel()],
            endpoints: [servers[0].endpoint(), servers[1].endpoint()],
            ns: format!("conf-rs-{stem}-{n}"),
        };
        run_case(path, ctx).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_memory() {
    let server = TestServer::memory().await;
    run_all("memory", &[&server, &server]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_two_replicas_on_one_redis() {
    let redis = RedisServer::start();
    let a = TestServer::with_redis(&redis.url()).await;
    let b = TestServer::with_redis(&redis.url()).await;
    run_all("replicas", &[&a, &b]).await;
}
