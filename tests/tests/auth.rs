//! Authentication, authorization and rate limits over real gRPC (docs/security.md): every RPC ×
//! every right × own and other namespace, credentials, reflection and health, ListNamespaces and
//! GetStats filtering, GetOrSet leases for read-only callers, rate limits with RetryInfo and
//! their metric, the non-loopback refusal, tokens-file rotation and the admin port's token.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::auth::{token_hash_hex, Right};
use tiercache_server::config::Config;
use tiercache_testkit::req::{self, InNamespace};
use tiercache_testkit::{redis_config, wait_for, RedisServer, TestServer};
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

/// The namespace the principals' rights cover (`a*`), and one they do not.
const OWN: &str = "a1";
const OTHER: &str = "b1";

fn token(principal: &str) -> String {
    format!("tc_test_{principal}")
}

/// A principal per right on `a*`, `all` with every right on `a*`, `root` with every right on
/// every namespace, and `nobody` with no right at all.
fn config_toml() -> String {
    let mut toml = String::from(
        "dynamic_namespaces = false\n[namespaces.a1]\n[namespaces.a2]\n[namespaces.b1]\n",
    );
    let mut principal = |name: &str, rights: &str| {
        toml.push_str(&format!(
            "[auth.principals.{name}]\ntoken_sha256 = [\"{}\"]\n[auth.principals.{name}.rights]\n{rights}\n",
            token_hash_hex(&token(name))
        ));
    };
    for r in Right::ALL {
        principal(r.as_str(), &format!("\"a*\" = [\"{}\"]", r.as_str()));
    }
    principal(
        "all",
        "\"a*\" = [\"read\", \"write\", \"invalidate\", \"lock\", \"admin\"]",
    );
    principal(
        "root",
        "\"*\" = [\"read\", \"write\", \"invalidate\", \"lock\", \"admin\"]",
    );
    principal("nobody", "");
    toml
}

async fn server() -> TestServer {
    TestServer::start(Config::from_toml(&config_toml()).unwrap()).await
}

/// `msg` with `authorization: Bearer <token>` when a token is given.
fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

struct Clients {
    cache: CacheServiceClient<Channel>,
    lock: LockServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
}

impl Clients {
    fn new(server: &TestServer) -> Self {
        Self {
            cache: CacheServiceClient::new(server.channel()),
            lock: LockServiceClient::new(server.channel()),
            admin: AdminServiceClient::new(server.channel()),
        }
    }
}

/// Every RPC that names a namespace, with the right it needs. Pipeline ops are checked one by
/// one, so each op is a row of its own.
const RPCS: [(&str, Right); 22] = [
    ("Get", Right::Read),
    ("GetMany", Right::Read),
    ("GetOrSet", Right::Read),
    ("GetOrSetMany", Right::Read),
    ("Watch", Right::Read),
    ("Pipeline.get", Right::Read),
    ("Set", Right::Write),
    ("SetMany", Right::Write),
    ("Delete", Right::Write),
    ("Fill", Right::Write),
    ("FillMany", Right::Write),
    ("ReleaseLease", Right::Write),
    ("Pipeline.set", Right::Write),
    ("Pipeline.delete", Right::Write),
    ("InvalidateTags", Right::Invalidate),
    ("FlushNamespace", Right::Invalidate),
    ("AcquireLock", Right::Lock),
    ("RenewLock", Right::Lock),
    ("ReleaseLock", Right::Lock),
    ("GetStats", Right::Admin),
    ("Inspect", Right::Admin),
    ("GetStats.all", Right::Admin),
];

/// Calls `rpc` on namespace `ns` with `token`; `Ok` when the call (or the pipeline op)
/// succeeded.
async fn call(c: &mut Clients, rpc: &str, ns: &str, token: Option<&str>) -> Result<(), Status> {
    let t = token;
    let key = "k";
    match rpc {
        "Get" => c
            .cache
            .get(with_token(req::get(key).in_namespace(ns), t))
            .await
            .map(drop),
        "GetMany" => c
            .cache
            .get_many(with_token(
                pb::GetManyRequest {
                    namespace: ns.into(),
                    keys: vec![key.into()],
                    fresh_only: false,
                },
                t,
            ))
            .await
            .map(drop),
        "GetOrSet" => c
            .cache
            .get_or_set(with_token(req::get_or_set(key).in_namespace(ns), t))
            .await
            .map(drop),
        "GetOrSetMany" => c
            .cache
            .get_or_set_many(with_token(
                pb::GetOrSetManyRequest {
                    namespace: ns.into(),
                    keys: vec![key.into()],
                    ..Default::default()
                },
                t,
            ))
            .await
            .map(drop),
        "Watch" => {
            let mut stream = c
                .cache
                .watch(with_token(
                    pb::WatchRequest {
                        namespace: ns.into(),
                    },
                    t,
                ))
                .await?
                .into_inner();
            stream.message().await.map(drop)
        }
        "Set" => c
            .cache
            .set(with_token(req::set(key, "v").in_namespace(ns), t))
            .await
            .map(drop),
        "SetMany" => c
            .cache
            .set_many(with_token(
                pb::SetManyRequest {
                    requests: vec![req::set(key, "v").in_namespace(ns)],
                },
                t,
            ))
            .await
            .map(drop),
        "Delete" => c
            .cache
            .delete(with_token(req::delete("gone").in_namespace(ns), t))
            .await
            .map(drop),
        "Fill" => c
            .cache
            .fill(with_token(
                req::fill("f", "no-such-lease", "v").in_namespace(ns),
                t,
            ))
            .await
            .map(drop),
        "FillMany" => c
            .cache
            .fill_many(with_token(
                pb::FillManyRequest {
                    requests: vec![req::fill("f", "no-such-lease", "v").in_namespace(ns)],
                },
                t,
            ))
            .await
            .map(drop),
        "ReleaseLease" => c
            .cache
            .release_lease(with_token(
                req::release_lease("f", "no-such-lease").in_namespace(ns),
                t,
            ))
            .await
            .map(drop),
        "InvalidateTags" => c
            .cache
            .invalidate_tags(with_token(req::invalidate_tags(&["t"]).in_namespace(ns), t))
            .await
            .map(drop),
        "FlushNamespace" => c
            .cache
            .flush_namespace(with_token(req::flush().in_namespace(ns), t))
            .await
            .map(drop),
        "AcquireLock" => c
            .lock
            .acquire_lock(with_token(
                req::acquire_lock("l", Duration::from_secs(5), Duration::ZERO).in_namespace(ns),
                t,
            ))
            .await
            .map(drop),
        "RenewLock" => c
            .lock
            .renew_lock(with_token(
                req::renew_lock("l", "not-the-owner", Duration::from_secs(5)).in_namespace(ns),
                t,
            ))
            .await
            .map(drop),
        "ReleaseLock" => c
            .lock
            .release_lock(with_token(
                req::release_lock("l", "not-the-owner").in_namespace(ns),
                t,
            ))
            .await
            .map(drop),
        "GetStats" => c
            .admin
            .get_stats(with_token(req::stats().in_namespace(ns), t))
            .await
            .map(drop),
        // Without a namespace: succeeds for everyone, listing only what the caller
        // administers; "allowed" here means `ns` is among the namespaces listed.
        "GetStats.all" => {
            let all = pb::GetStatsRequest::default();
            let listed = c.admin.get_stats(with_token(all, t)).await?.into_inner();
            if listed.namespaces.iter().any(|s| s.namespace == ns) {
                Ok(())
            } else {
                Err(Status::permission_denied("not listed"))
            }
        }
        "Inspect" => c
            .admin
            .inspect(with_token(req::inspect(key).in_namespace(ns), t))
            .await
            .map(drop),
        op if op.starts_with("Pipeline.") => {
            use pb::pipeline_request::Operation;
            let operation = match op {
                "Pipeline.get" => Operation::Get(req::get(key).in_namespace(ns)),
                "Pipeline.set" => Operation::Set(req::set(key, "v").in_namespace(ns)),
                _ => Operation::Delete(req::delete("gone").in_namespace(ns)),
            };
            let requests = tokio_stream::iter(vec![pb::PipelineRequest {
                id: 7,
                operation: Some(operation),
            }]);
            let mut answers = c
                .cache
                .pipeline(with_token(requests, t))
                .await?
                .into_inner();
            let answer = answers.message().await?.expect("an answer");
            assert_eq!(answer.id, 7);
            match answer.result {
                Some(pb::pipeline_response::Result::Error(e)) => Err(Status::with_details(
                    Code::from_i32(e.code),
                    e.message,
                    e.details,
                )),
                Some(_) => Ok(()),
                None => panic!("an empty pipeline answer"),
            }
        }
        other => panic!("unknown rpc {other}"),
    }
}

/// Makes `k` a hit in both namespaces, so GetOrSet answers from the cache (reads).
async fn seed(c: &mut Clients) {
    for ns in [OWN, OTHER] {
        let root = token("root");
        c.cache
            .set(with_token(req::set("k", "v").in_namespace(ns), Some(&root)))
            .await
            .expect("root may set");
    }
}

#[track_caller]
fn assert_denied(s: &Status, right: Right, ns: &str, what: &str) {
    assert_eq!(s.code(), Code::PermissionDenied, "{what}: {s:?}");
    let info = s
        .get_details_error_info()
        .unwrap_or_else(|| panic!("{what}: no ErrorInfo: {s:?}"));
    assert_eq!(info.reason, "PERMISSION_DENIED", "{what}");
    assert_eq!(
        info.metadata.get("right").map(String::as_str),
        Some(right.as_str()),
        "{what}"
    );
    assert_eq!(
        info.metadata.get("namespace").map(String::as_str),
        Some(ns),
        "{what}"
    );
}

/// Every RPC × every right × own namespace and another: exactly the documented calls succeed,
/// and every refusal is PERMISSION_DENIED naming the right and the namespace.
#[tokio::test]
async fn every_rpc_needs_exactly_its_right_on_its_namespace() {
    let server = server().await;
    let mut c = Clients::new(&server);
    for principal in Right::ALL {
        let t = token(principal.as_str());
        for (rpc, needed) in RPCS {
            for ns in [OWN, OTHER] {
                seed(&mut c).await;
                let got = call(&mut c, rpc, ns, Some(&t)).await;
                let what = format!("{rpc} in {ns} by {}", principal.as_str());
                if principal == needed && ns == OWN {
                    assert!(got.is_ok(), "{what}: {got:?}");
                } else if rpc == "GetStats.all" {
                    assert!(got.is_err(), "{what} must not list {ns}");
                } else {
                    assert_denied(&got.unwrap_err(), needed, ns, &what);
                }
            }
        }
    }
}

/// A token for `a*` with every right cannot read, write, watch, invalidate, lock or inspect `b1`;
/// and it can do all of it on `a1`.
#[tokio::test]
async fn a_token_for_a_prefix_cannot_touch_another_namespace() {
    let server = server().await;
    let mut c = Clients::new(&server);
    let t = token("all");
    for (rpc, needed) in RPCS {
        seed(&mut c).await;
        let own = call(&mut c, rpc, OWN, Some(&t)).await;
        assert!(own.is_ok(), "{rpc} in {OWN}: {own:?}");
        let other = call(&mut c, rpc, OTHER, Some(&t)).await;
        if rpc == "GetStats.all" {
            assert!(other.is_err(), "GetStats must not list {OTHER}");
        } else {
            assert_denied(&other.unwrap_err(), needed, OTHER, rpc);
        }
    }
    // Nothing it tried changed `b1`.
    let root = token("root");
    let entry = c
        .cache
        .get(with_token(req::get("k").in_namespace(OTHER), Some(&root)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(entry.outcome(), pb::GetOutcome::Hit);
}

/// No token, an unknown token, a malformed header: UNAUTHENTICATED on every service (streams
/// too), with no token in the message; health stays open.
#[tokio::test]
async fn missing_or_unknown_credentials_are_unauthenticated_and_health_is_open() {
    let server = server().await;
    let mut c = Clients::new(&server);
    for t in [None, Some("tc_not_a_known_token"), Some("")] {
        for rpc in [
            "Get",
            "Set",
            "Watch",
            "Pipeline.get",
            "AcquireLock",
            "Inspect",
            "GetStats",
        ] {
            let s = call(&mut c, rpc, OWN, t).await.unwrap_err();
            assert_eq!(s.code(), Code::Unauthenticated, "{rpc} with {t:?}: {s:?}");
            assert!(!s.message().contains("tc_not_a_known_token"), "{s:?}");
            assert_eq!(
                s.get_details_error_info().unwrap().reason,
                "UNAUTHENTICATED"
            );
        }
        let s = c
            .admin
            .list_namespaces(with_token(pb::ListNamespacesRequest {}, t))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated);
    }
    let mut r = Request::new(req::get("k").in_namespace(OWN));
    r.metadata_mut()
        .insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(
        c.cache.get(r).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let health = HealthClient::new(server.channel())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health needs no credential")
        .into_inner();
    assert_eq!(health.status, 1, "SERVING");
}

async fn list_services(channel: Channel, t: Option<&str>) -> Result<Vec<String>, Status> {
    use tonic_reflection::pb::v1 as r;
    let ask = r::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = r::server_reflection_client::ServerReflectionClient::new(channel)
        .server_reflection_info(with_token(tokio_stream::iter(vec![ask]), t))
        .await?
        .into_inner();
    match replies.message().await?.and_then(|m| m.message_response) {
        Some(r::server_reflection_response::MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("expected the service list, got {other:?}"),
    }
}

/// With auth on, reflection needs a valid credential, and any principal's will do (no right).
#[tokio::test]
async fn reflection_needs_a_valid_credential() {
    let server = server().await;
    let s = list_services(server.channel(), None).await.unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let s = list_services(server.channel(), Some("tc_unknown"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated);
    let listed = list_services(server.channel(), Some(&token("nobody")))
        .await
        .expect("a valid credential");
    assert!(
        listed.iter().any(|s| s == "tiercache.v1.CacheService"),
        "{listed:?}"
    );

    // `reflection = false` turns it off, credential or not.
    let config = Config::from_toml(&format!("reflection = false\n{}", config_toml())).unwrap();
    let server = TestServer::start(config).await;
    let s = list_services(server.channel(), Some(&token("root")))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unimplemented, "{s:?}");
}

/// ListNamespaces shows only namespaces the caller has some right on; GetStats without a
/// namespace only those it administers.
#[tokio::test]
async fn list_namespaces_and_stats_show_only_the_callers_namespaces() {
    let server = server().await;
    let mut c = Clients::new(&server);
    let names = |r: pb::ListNamespacesResponse| {
        let mut v: Vec<String> = r.namespaces.into_iter().map(|n| n.name).collect();
        v.sort();
        v
    };
    for (principal, expected) in [
        ("read", vec!["a1", "a2"]),
        ("all", vec!["a1", "a2"]),
        ("root", vec!["a1", "a2", "b1"]),
        ("nobody", vec![]),
    ] {
        let listed = c
            .admin
            .list_namespaces(with_token(
                pb::ListNamespacesRequest {},
                Some(&token(principal)),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(names(listed), expected, "{principal}");
    }
    for (principal, expected) in [
        ("read", vec![]),
        ("admin", vec!["a1", "a2"]),
        ("root", vec!["a1", "a2", "b1"]),
    ] {
        let stats = c
            .admin
            .get_stats(with_token(
                pb::GetStatsRequest::default(),
                Some(&token(principal)),
            ))
            .await
            .unwrap()
            .into_inner();
        let mut got: Vec<String> = stats.namespaces.into_iter().map(|s| s.namespace).collect();
        got.sort();
        assert_eq!(got, expected, "{principal}");
    }
}

/// GetOrSet with only `read`: a hit answers, a wait for another caller's fill answers, but
/// where it would be granted the lease it gets PERMISSION_DENIED naming `write`, and no lease
/// is left behind (a writer gets it at once).
#[tokio::test]
async fn get_or_set_leases_need_write() {
    get_or_set_leases_need_write_on(server().await).await;
}

/// The same over Redis: the read-only caller only looks at the lease in Redis, never takes it.
#[tokio::test]
async fn get_or_set_leases_need_write_over_redis() {
    let redis = RedisServer::start();
    let mut config = Config::from_toml(&config_toml()).unwrap();
    config.redis = Some(redis_config(&redis.url()));
    get_or_set_leases_need_write_on(TestServer::start(config).await).await;
}

async fn get_or_set_leases_need_write_on(server: TestServer) {
    let mut c = Clients::new(&server);
    let (reader, all, root) = (token("read"), token("all"), token("root"));

    // A miss: the reader would get the lease.
    let s = c
        .cache
        .get_or_set(with_token(
            req::get_or_set("miss").in_namespace(OWN),
            Some(&reader),
        ))
        .await
        .unwrap_err();
    assert_denied(&s, Right::Write, OWN, "GetOrSet lease");
    let inspect = c
        .admin
        .inspect(with_token(
            req::inspect("miss").in_namespace(OWN),
            Some(&root),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!inspect.lease_held, "no lease may be left behind");
    // GetOrSetMany likewise, and none of its keys keeps a lease.
    let s = c
        .cache
        .get_or_set_many(with_token(
            pb::GetOrSetManyRequest {
                namespace: OWN.into(),
                keys: vec!["m1".into(), "m2".into()],
                ..Default::default()
            },
            Some(&reader),
        ))
        .await
        .unwrap_err();
    assert_denied(&s, Right::Write, OWN, "GetOrSetMany lease");
    for key in ["m1", "m2"] {
        let inspect = c
            .admin
            .inspect(with_token(req::inspect(key).in_namespace(OWN), Some(&root)))
            .await
            .unwrap()
            .into_inner();
        assert!(!inspect.lease_held, "{key}: no lease may be left behind");
    }

    // A writer takes the lease; the reader waits for its fill and gets the value.
    let lease = c
        .cache
        .get_or_set(with_token(
            req::get_or_set("miss").in_namespace(OWN),
            Some(&all),
        ))
        .await
        .unwrap()
        .into_inner()
        .lease
        .expect("the writer gets the lease");
    let mut waiter = c.cache.clone();
    let reader2 = reader.clone();
    let wait = tokio::spawn(async move {
        waiter
            .get_or_set(with_token(
                pb::GetOrSetRequest {
                    max_wait: req::duration(Duration::from_secs(5)),
                    ..req::get_or_set("miss").in_namespace(OWN)
                },
                Some(&reader2),
            ))
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.cache
        .fill(with_token(
            req::fill("miss", &lease.token, "computed").in_namespace(OWN),
            Some(&all),
        ))
        .await
        .unwrap();
    let got = wait
        .await
        .unwrap()
        .expect("read suffices to wait")
        .into_inner();
    assert_eq!(
        got.entry.expect("the filled value").value,
        "computed".as_bytes()
    );
    // And a hit.
    let got = c
        .cache
        .get_or_set(with_token(
            req::get_or_set("miss").in_namespace(OWN),
            Some(&reader),
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(got.lease.is_none() && got.entry.is_some());
}

/// Sends `GET /metrics`, with a bearer token when given; returns the status code and body.
async fn scrape(addr: SocketAddr, token: Option<&str>) -> (u16, String) {
    let s = tiercache_testkit::scrape_metrics(addr, token)
        .await
        .unwrap();
    (s.status, s.body)
}

/// The value of the sample of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[track_caller]
fn assert_rate_limited(s: &Status, limit: &str) {
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let info = s.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.reason, "RATE_LIMITED");
    assert_eq!(info.metadata.get("limit").map(String::as_str), Some(limit));
    let retry = s.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
}

/// A principal's and a namespace's token buckets: past the burst, RESOURCE_EXHAUSTED with
/// RetryInfo (`RATE_LIMITED`), counted in `tiercache_rate_limited_total`; refusals of auth in
/// `tiercache_auth_refusals_total`.
#[tokio::test]
async fn rate_limits_refuse_with_retry_info_and_are_counted() {
    let toml = format!(
        "{}\n[namespaces.c1]\nrate_limit = {{ per_second = 1, burst = 2 }}\n\
         [auth.principals.limited]\ntoken_sha256 = [\"{}\"]\nrate_limit = {{ per_second = 1, burst = 2 }}\n\
         [auth.principals.limited.rights]\n\"a*\" = [\"read\"]\n",
        config_toml(),
        token_hash_hex(&token("limited"))
    );
    let server = TestServer::start(Config::from_toml(&toml).unwrap()).await;
    let admin = server.admin_addr().unwrap();
    let mut c = Clients::new(&server);
    let (_, before) = scrape(admin, None).await;
    for labels in [
        [
            ("tiercache_limit", "principal"),
            ("tiercache_namespace", OWN),
        ],
        [
            ("tiercache_limit", "namespace"),
            ("tiercache_namespace", "c1"),
        ],
    ] {
        assert_eq!(
            sample(&before, "tiercache_rate_limited_total", &labels),
            Some(0.0),
            "{labels:?} exists at 0 from the start:\n{before}"
        );
    }

    // The principal's bucket: two calls, then refused.
    let limited = token("limited");
    for _ in 0..2 {
        call(&mut c, "Get", OWN, Some(&limited)).await.unwrap();
    }
    let s = call(&mut c, "Get", OWN, Some(&limited)).await.unwrap_err();
    assert_rate_limited(&s, "principal");
    // Other principals are not held back by it.
    call(&mut c, "Get", OWN, Some(&token("root")))
        .await
        .unwrap();

    // The namespace's bucket, whoever calls.
    let root = token("root");
    for _ in 0..2 {
        call(&mut c, "Get", "c1", Some(&root)).await.unwrap();
    }
    let s = call(&mut c, "Get", "c1", Some(&token("all")))
        .await
        .unwrap_err();
    // `all` has no right on c1: authorization comes first.
    assert_eq!(s.code(), Code::PermissionDenied);
    let s = call(&mut c, "Set", "c1", Some(&root)).await.unwrap_err();
    assert_rate_limited(&s, "namespace");

    // Unauthenticated and denied calls are counted by reason.
    let _ = call(&mut c, "Get", OWN, None).await;
    let _ = call(&mut c, "Get", OWN, Some("tc_unknown")).await;
    let (_, text) = scrape(admin, None).await;
    let value = |name, labels: &[(&str, &str)]| sample(&text, name, labels).unwrap_or(-1.0);
    assert_eq!(
        value(
            "tiercache_rate_limited_total",
            &[
                ("tiercache_limit", "principal"),
                ("tiercache_namespace", OWN)
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        value(
            "tiercache_rate_limited_total",
            &[
                ("tiercache_limit", "namespace"),
                ("tiercache_namespace", "c1")
            ]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tiercache_auth_refusals_total",
            &[("reason", "missing_credential")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tiercache_auth_refusals_total",
            &[("reason", "unknown_credential")]
        ),
        1.0
    );
    assert_eq!(
        value(
            "tiercache_auth_refusals_total",
            &[("reason", "permission_denied")]
        ),
        1.0
    );
    assert!(!text.contains(&limited), "no token in the metrics");

    // The bucket refills: after the retry delay the principal may call again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    call(&mut c, "Get", OWN, Some(&limited)).await.unwrap();
}

/// A rate limit applies without auth too: `[defaults] rate_limit` gives every namespace its
/// own bucket.
#[tokio::test]
async fn namespace_rate_limits_apply_without_auth() {
    let config =
        Config::from_toml("[defaults]\nrate_limit = { per_second = 1, burst = 3 }\n").unwrap();
    let server = TestServer::start(config).await;
    let mut c = Clients::new(&server);
    for _ in 0..3 {
        call(&mut c, "Get", "default", None).await.unwrap();
    }
    assert_rate_limited(
        &call(&mut c, "Get", "default", None).await.unwrap_err(),
        "namespace",
    );
    // Another (dynamic) namespace has a bucket of its own.
    call(&mut c, "Get", "other", None).await.unwrap();
}

/// A listener on a non-loopback address (0.0.0.0) without `[auth]` refuses to start, naming
/// `auth` and `allow_insecure`; with `allow_insecure = true` it serves (reflection then off by
/// default); with `[auth]` it serves and requires credentials.
#[tokio::test]
async fn non_loopback_listen_needs_auth_or_allow_insecure() {
    let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let e = tiercache_server::run_with_admin(listener, None, Config::default(), async {})
        .await
        .expect_err("refuses to start");
    let e = e.to_string();
    assert!(e.contains("auth") && e.contains("allow_insecure"), "{e}");

    for toml in ["allow_insecure = true\n".to_string(), config_toml()] {
        let listener = TcpListener::bind("0.0.0.0:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = Config::from_toml(&toml).unwrap();
        let served = tokio::spawn(tiercache_server::run_with_admin(
            listener,
            None,
            config,
            async {
                let _ = stopped.await;
            },
        ));
        // Clients reach it over loopback.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        wait_for(Duration::from_secs(10), Duration::from_millis(20), || {
            let mut health = HealthClient::new(channel.clone());
            async move {
                health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
            }
        })
        .await
        .expect("serves");
        let mut cache = CacheServiceClient::new(channel.clone());
        let secured = toml.contains("[auth");
        let t = secured.then(|| token("root"));
        cache
            .get(with_token(req::get("k").in_namespace("a1"), t.as_deref()))
            .await
            .unwrap();
        if secured {
            let s = cache
                .get(req::get("k").in_namespace("a1"))
                .await
                .unwrap_err();
            assert_eq!(s.code(), Code::Unauthenticated);
        }
        let s = list_services(channel, t.as_deref()).await.unwrap_err();
        assert_eq!(
            s.code(),
            Code::Unimplemented,
            "reflection is off off loopback: {s:?}"
        );
        let _ = stop.send(());
        served.await.unwrap().unwrap();
    }
}

/// Tokens in `auth.tokens_file` work at start; a line added works without a restart, a line
/// removed stops working.
#[tokio::test]
async fn tokens_file_rotation_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let (old, new) = ("tc_rotate_old", "tc_rotate_new");
    std::fs::write(
        &path,
        format!("# rotation test\nrotor {}\n", token_hash_hex(old)),
    )
    .unwrap();
    let toml = format!(
        "[auth]\ntokens_file = {:?}\n[auth.principals.rotor.rights]\n\"default\" = [\"read\"]\n",
        path.display().to_string()
    );
    let server = TestServer::start(Config::from_toml(&toml).unwrap()).await;
    let c = Clients::new(&server);
    let works = |c: &Clients, t: &'static str| {
        let mut cache = c.cache.clone();
        async move {
            cache
                .get(with_token(req::get("k"), Some(t)))
                .await
                .map(drop)
        }
    };
    works(&c, old)
        .await
        .expect("the file's token works at start");
    assert_eq!(
        works(&c, new).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // Add the new token: both work.
    std::fs::write(
        &path,
        format!(
            "rotor {}\nrotor {}\n",
            token_hash_hex(old),
            token_hash_hex(new)
        ),
    )
    .unwrap();
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { works(&c, new).await.is_ok() },
    )
    .await
    .expect("the added token works without a restart");
    works(&c, old).await.expect("the old one still works");

    // Remove the old one.
    std::fs::write(&path, format!("rotor {}\n", token_hash_hex(new))).unwrap();
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async { works(&c, old).await.is_err() },
    )
    .await
    .expect("the removed token stops working");
    assert_eq!(
        works(&c, old).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    works(&c, new).await.unwrap();

    // A bad line is skipped, the rest applies.
    std::fs::write(
        &path,
        format!(
            "nobody {}\nrotor {}\n",
            token_hash_hex(old),
            token_hash_hex(new)
        ),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    works(&c, new).await.unwrap();
    assert_eq!(
        works(&c, old).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}

/// A tokens file naming an unknown principal fails at start, naming the line, not the hash.
#[tokio::test]
async fn a_bad_tokens_file_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let hash = token_hash_hex("tc_x");
    std::fs::write(&path, format!("\nghost {hash}\n")).unwrap();
    let toml = format!("[auth]\ntokens_file = {:?}\n", path.display().to_string());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = tiercache_server::run_with_admin(
        listener,
        None,
        Config::from_toml(&toml).unwrap(),
        async {},
    )
    .await
    .expect_err("refuses to start")
    .to_string();
    assert!(
        e.contains("auth.tokens_file line 2") && e.contains("ghost"),
        "{e}"
    );
    assert!(!e.contains(&hash), "{e}");
}

/// `telemetry.admin_token_sha256`: /metrics answers 401 without the bearer token (or with a
/// wrong one), 200 with it.
#[tokio::test]
async fn admin_port_takes_a_bearer_token() {
    let toml = format!(
        "[telemetry]\nadmin_token_sha256 = \"{}\"\n",
        token_hash_hex("tc_scrape")
    );
    let server = TestServer::start(Config::from_toml(&toml).unwrap()).await;
    let admin = server.admin_addr().unwrap();
    assert_eq!(scrape(admin, None).await.0, 401);
    assert_eq!(scrape(admin, Some("tc_wrong")).await.0, 401);
    let (code, body) = scrape(admin, Some("tc_scrape")).await;
    assert_eq!(code, 200);
    assert!(body.contains("tiercache_rpc_requests_total"), "{body}");
    // Without the setting it stays open (loopback by default).
    let server = TestServer::memory().await;
    assert_eq!(scrape(server.admin_addr().unwrap(), None).await.0, 200);
}

/// Auth off (no `[auth]`): every caller may do everything, with or without a token.
#[tokio::test]
async fn without_auth_every_caller_has_every_right() {
    let server = TestServer::memory().await;
    let mut c = Clients::new(&server);
    // A hit, so GetOrSetMany does not wait on the lease GetOrSet would take.
    call(&mut c, "Set", "default", None).await.unwrap();
    let mut results = HashMap::new();
    for (rpc, _) in RPCS {
        results.insert(rpc, call(&mut c, rpc, "default", None).await);
    }
    for (rpc, r) in results {
        assert!(r.is_ok(), "{rpc}: {r:?}");
    }
    call(&mut c, "Get", "default", Some("tc_anything"))
        .await
        .unwrap();
}
