//! Redis unavailable: reads keep serving from L1, writes and leases fall back to the replica,
//! locks and invalidations refuse, health and stats say so, and recovery is automatic.

use std::time::Duration;

use bytes::Bytes;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::config::{Config, RedisConfig};
use tiercache_testkit::{wait_for, RedisServer, TestServer};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: "default".into(),
        key: key.into(),
        ..Default::default()
    }
}

fn set(key: &str, value: &str) -> pb::SetRequest {
    pb::SetRequest {
        namespace: "default".into(),
        key: key.into(),
        value: Bytes::from(value.to_string()),
        ..Default::default()
    }
}

async fn health(server: &TestServer, service: &str) -> ServingStatus {
    HealthClient::new(server.channel())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

async fn degraded(server: &TestServer) -> bool {
    AdminServiceClient::new(server.channel())
        .get_stats(pb::GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .degraded
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_degrades_and_recovers() {
    let mut redis = RedisServer::start();
    let mut redis_config = RedisConfig::new(redis.url());
    redis_config.response_timeout = Duration::from_millis(300);
    redis_config.connect_timeout = Duration::from_millis(300);
    let server = TestServer::start(Config {
        redis: Some(redis_config),
        ..Config::default()
    })
    .await;
    let mut c = CacheServiceClient::new(server.channel());
    c.set(set("kept", "in-l1")).await.unwrap();
    assert_eq!(
        health(&server, "tiercache.redis").await,
        ServingStatus::Serving
    );
    assert!(!degraded(&server).await);

    redis.stop();

    // Reads keep serving what L1 holds.
    let r = c.get(get("kept")).await.unwrap().into_inner();
    assert_eq!(r.outcome(), pb::GetOutcome::Hit);
    let e = r.entry.unwrap();
    assert_eq!((e.tier(), e.value), (pb::Tier::L1, Bytes::from("in-l1")));
    wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
        degraded(&server)
    })
    .await
    .expect("stats report degraded mode");
    assert_eq!(health(&server, "").await, ServingStatus::Serving);
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { health(&server, "tiercache.redis").await == ServingStatus::NotServing },
    )
    .await
    .expect("the redis health sub-status turns NOT_SERVING");

    // Writes fall back to this replica; reads see them; bounded latency (no Redis timeouts now).
    let started = std::time::Instant::now();
    let w = c.set(set("during", "outage")).await.unwrap().into_inner();
    assert_eq!(w.outcome(), pb::SetOutcome::Stored);
    let r = c.get(get("during")).await.unwrap().into_inner();
    assert_eq!(r.entry.unwrap().value, Bytes::from("outage"));
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "degraded calls skip Redis"
    );

    // Coalescing degrades to one computation per replica.
    let mut callers = Vec::new();
    for _ in 0..20 {
        let mut c = c.clone();
        callers.push(tokio::spawn(async move {
            c.get_or_set(pb::GetOrSetRequest {
                namespace: "default".into(),
                key: "cold".into(),
                max_wait: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    let mut leases = Vec::new();
    let mut waiting = Vec::new();
    for t in callers {
        let r = t.await;
        match r {
            Ok(r) if r.outcome() == pb::GetOrSetOutcome::Lease => leases.push(r),
            Ok(r) => waiting.push(r),
            Err(e) => panic!("{e}"),
        }
    }
    // All callers answered means none waited: only one can have the lease, the rest timed out or
    // were filled. Here nobody fills, so exactly one lease and the others waited to COMPUTE.
    assert_eq!(leases.len(), 1, "one computation on this replica");
    assert!(waiting
        .iter()
        .all(|r| r.outcome() == pb::GetOrSetOutcome::Compute));

    // Locks and invalidations never degrade silently.
    let err = LockServiceClient::new(server.channel())
        .acquire_lock(pb::AcquireLockRequest {
            namespace: "default".into(),
            name: "l".into(),
            ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            max_wait: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    let err = c
        .invalidate_tags(pb::InvalidateTagsRequest {
            namespace: "default".into(),
            tags: vec!["t".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);

    // Recovery is automatic; what was written during the outage is dropped from L1.
    redis.restart();
    wait_for(
        Duration::from_secs(10),
        Duration::from_millis(20),
        || async { !degraded(&server).await },
    )
    .await
    .expect("the server leaves degraded mode");
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { health(&server, "tiercache.redis").await == ServingStatus::Serving },
    )
    .await
    .expect("the redis health sub-status turns SERVING again");
    let r = c.get(get("during")).await.unwrap().into_inner();
    assert_eq!(
        r.outcome(),
        pb::GetOutcome::Miss,
        "outage writes are not served after recovery"
    );
    let w = c.set(set("after", "ok")).await.unwrap().into_inner();
    assert_eq!(w.outcome(), pb::SetOutcome::Stored);
    let r = c.get(get("after")).await.unwrap().into_inner();
    assert_eq!(r.entry.unwrap().value, Bytes::from("ok"));
}
