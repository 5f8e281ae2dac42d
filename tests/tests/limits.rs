//! Limits a hostile or careless client runs into, over real gRPC: how many namespaces it can
//! create, how long a lease, lock or wait it can ask for, how many Redis calls lock waiters cost,
//! and how long tag marks live when replicas have different policies.

use std::time::Duration;

use futures::StreamExt;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::config::{Config, PolicyConfig};
use tiercache_testkit::req::{self, duration as dur, InNamespace as _};
use tiercache_testkit::{redis_config, FleetBuilder, RedisServer, TestServer};
use tonic::Code;
use tonic_types::StatusExt;

async fn namespace_names(server: &TestServer) -> Vec<String> {
    let mut admin = AdminServiceClient::new(server.channel());
    admin
        .list_namespaces(pb::ListNamespacesRequest::default())
        .await
        .expect("ListNamespaces")
        .into_inner()
        .namespaces
        .into_iter()
        .map(|n| n.name)
        .collect()
}

#[tokio::test]
async fn ten_thousand_gets_on_new_namespaces_create_only_max_namespaces() {
    let server = TestServer::memory().await;
    let channel = server.channel();
    let results: Vec<Result<(), tonic::Status>> = futures::stream::iter(0..10_000)
        .map(|i| {
            let mut c = CacheServiceClient::new(channel.clone());
            async move {
                c.get(req::get("k").in_namespace(&format!("ns-{i}")))
                    .await
                    .map(|_| ())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(
        ok, 64,
        "64 dynamic namespaces are created (the default max)"
    );
    for r in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(r.code(), Code::ResourceExhausted, "{r:?}");
        let info = r.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.reason, "TOO_MANY_NAMESPACES");
        assert_eq!(
            info.metadata.get("field").map(String::as_str),
            Some("namespace")
        );
    }
    // 64 dynamic ones plus the configured `default`.
    assert_eq!(namespace_names(&server).await.len(), 65);
    // An existing namespace keeps working.
    let mut c = CacheServiceClient::new(channel.clone());
    let first_ok = (0..10_000)
        .find(|i| results[*i].is_ok())
        .expect("one succeeded");
    c.get(req::get("k").in_namespace(&format!("ns-{first_ok}")))
        .await
        .expect("a created namespace still answers");
}

#[tokio::test]
async fn get_stats_and_inspect_on_an_unknown_namespace_create_nothing() {
    let server = TestServer::memory().await;
    let mut admin = AdminServiceClient::new(server.channel());
    let err = admin
        .get_stats(req::stats().in_namespace("never-written"))
        .await
        .expect_err("unknown namespace");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = admin
        .inspect(req::inspect("k").in_namespace("never-written"))
        .await
        .expect_err("unknown namespace");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(namespace_names(&server).await, vec!["default".to_string()]);
}

#[tokio::test]
async fn an_invalid_request_does_not_create_its_namespace() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel());
    let err = c
        .get(req::get("").in_namespace("fresh-a"))
        .await
        .expect_err("empty key");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = c
        .set(req::set(&"k".repeat(5000), "v").in_namespace("fresh-b"))
        .await
        .expect_err("key too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut locks = LockServiceClient::new(server.channel());
    let mut bad = req::acquire_lock("l", Duration::from_secs(1), Duration::ZERO);
    bad.namespace = "fresh-c".into();
    bad.ttl = None;
    let err = locks.acquire_lock(bad).await.expect_err("no ttl");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(namespace_names(&server).await, vec!["default".to_string()]);
    // The same calls, valid, do create it.
    c.get(req::get("k").in_namespace("fresh-a"))
        .await
        .expect("valid Get");
    assert!(namespace_names(&server)
        .await
        .contains(&"fresh-a".to_string()));
}

const TEN_YEARS: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[tokio::test]
async fn a_ten_year_lease_gets_the_capped_ttl_and_the_reply_says_so() {
    for on_redis in [false, true] {
        let builder = if on_redis {
            FleetBuilder::redis(1)
        } else {
            FleetBuilder::memory()
        };
        let fleet = builder.start().await;
        let mut c = fleet.cache(0);
        let r = c
            .get_or_set(pb::GetOrSetRequest {
                lease_ttl: dur(TEN_YEARS),
                max_wait: dur(TEN_YEARS),
                ..req::get_or_set("k")
            })
            .await
            .expect("GetOrSet")
            .into_inner();
        assert_eq!(r.outcome, pb::GetOrSetOutcome::Lease as i32);
        let lease = r.lease.expect("lease");
        assert_eq!(
            lease.ttl,
            dur(Duration::from_secs(300)),
            "lease_ttl_max (5 min) applies"
        );
        assert_eq!(
            r.max_wait,
            dur(Duration::from_secs(60)),
            "max_wait_max (60 s) applies"
        );
        // The lease really expires with the capped TTL (Redis mode: look at its PTTL).
        if let Some(redis) = &fleet.redis {
            let mut conn = redis
                .client()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let pttl: i64 = redis::cmd("PTTL")
                .arg("tc:{default:k}:l")
                .query_async(&mut conn)
                .await
                .unwrap();
            assert!(pttl > 0 && pttl <= 300_000, "lease PTTL {pttl}");
        }
        let mut l = fleet.locks(0);
        let got = l
            .acquire_lock(req::acquire_lock("big", TEN_YEARS, TEN_YEARS))
            .await
            .expect("AcquireLock")
            .into_inner();
        assert_eq!(got.outcome, pb::AcquireLockOutcome::Acquired as i32);
        assert_eq!(got.ttl, dur(Duration::from_secs(300)), "lock_ttl_max");
        assert_eq!(got.max_wait, dur(Duration::from_secs(60)), "max_wait_max");
        let renewed = l
            .renew_lock(req::renew_lock("big", &got.owner_token, TEN_YEARS))
            .await
            .expect("RenewLock")
            .into_inner();
        assert_eq!(renewed.outcome, pb::LockOwnershipOutcome::Ok as i32);
        assert_eq!(renewed.ttl, dur(Duration::from_secs(300)));
    }
}

/// EVALSHA + EVAL calls Redis has served so far.
async fn script_calls(redis: &RedisServer) -> u64 {
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split([':', ','])
                .find_map(|f| f.strip_prefix("calls="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[tokio::test]
async fn lock_waiters_on_one_lock_poll_redis_once_per_interval_not_once_each() {
    let fleet = FleetBuilder::redis(1).channels(4).start().await;
    let redis = fleet.redis.as_ref().expect("redis");
    let mut holder = fleet.locks(0);
    let held = holder
        .acquire_lock(req::acquire_lock(
            "hot",
            Duration::from_secs(30),
            Duration::ZERO,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(held.outcome, pb::AcquireLockOutcome::Acquired as i32);
    const WAITERS: usize = 20;
    let window = Duration::from_millis(1500);
    let before = script_calls(redis).await;
    let waiters: Vec<_> = (0..WAITERS)
        .map(|i| {
            let mut l = fleet.locks(i % 4);
            tokio::spawn(async move {
                l.acquire_lock(req::acquire_lock("hot", Duration::from_secs(5), window))
                    .await
                    .map(|r| r.into_inner().outcome)
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for w in waiters {
        outcomes.push(w.await.unwrap().expect("AcquireLock"));
    }
    let calls = script_calls(redis).await - before;
    assert!(outcomes
        .iter()
        .all(|o| *o == pb::AcquireLockOutcome::Timeout as i32));
    // One poller every 50 ms over 1.5 s is ~30 calls, plus one per waiter when it takes over as
    // poller; N pollers would be ~600.
    let per_interval_bound = (window.as_millis() / 50) as u64 * 2 + WAITERS as u64 * 2;
    assert!(
        calls <= per_interval_bound,
        "{calls} script calls for {WAITERS} waiters over {window:?} (bound {per_interval_bound})"
    );
    // And a release still wakes a waiter at once.
    let mut waiter = fleet.locks(1);
    let wait = tokio::spawn(async move {
        waiter
            .acquire_lock(req::acquire_lock(
                "hot",
                Duration::from_secs(5),
                Duration::from_secs(10),
            ))
            .await
            .map(|r| r.into_inner())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    holder
        .release_lock(req::release_lock("hot", &held.owner_token))
        .await
        .unwrap();
    let got = wait.await.unwrap().unwrap();
    assert_eq!(got.outcome, pb::AcquireLockOutcome::Acquired as i32);
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn a_tag_mark_outlives_entries_written_by_a_replica_with_a_longer_policy() {
    let redis = RedisServer::start();
    // Replica A keeps entries up to 2 days; replica B's own policy would keep marks ~1 hour.
    let long = Config {
        redis: Some(redis_config(&redis.url())),
        defaults: PolicyConfig {
            max_ttl: Some(Duration::from_secs(2 * 24 * 3600)),
            ..PolicyConfig::default()
        },
        ..Config::default()
    };
    let short = Config {
        redis: Some(redis_config(&redis.url())),
        defaults: PolicyConfig {
            default_ttl: Some(Duration::from_secs(60)),
            max_ttl: Some(Duration::from_secs(600)),
            ..PolicyConfig::default()
        },
        ..Config::default()
    };
    let a = TestServer::start(long).await;
    let b = TestServer::start(short).await;
    let mut ca = CacheServiceClient::new(a.channel());
    let mut cb = CacheServiceClient::new(b.channel());
    ca.set(pb::SetRequest {
        ttl: dur(Duration::from_secs(36 * 3600)),
        tags: req::tags(&["t"]),
        ..req::set("k", "v")
    })
    .await
    .expect("Set on A");
    cb.invalidate_tags(req::invalidate_tags(&["t"]))
        .await
        .expect("InvalidateTags on B");
    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let entry_pttl: i64 = redis::cmd("PTTL")
        .arg("tc:{default:k}:e")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mark_pttl: i64 = redis::cmd("PTTL")
        .arg("tc:{default}:tag:t")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(entry_pttl > 35 * 3600 * 1000, "entry PTTL {entry_pttl}");
    assert!(
        mark_pttl >= entry_pttl,
        "the mark (PTTL {mark_pttl} ms) must outlive the entry it hides (PTTL {entry_pttl} ms)"
    );
    // And the entry stays hidden on both replicas.
    for c in [&mut ca, &mut cb] {
        let r = c.get(req::get("k")).await.unwrap().into_inner();
        assert!(tiercache_testkit::rpc::hit_or_miss(r).is_none());
    }
}
