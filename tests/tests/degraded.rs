//! Redis unavailable (degraded mode) and Redis error replies, against real redis-server processes
//! and two server replicas.
//!
//! The contract (docs/architecture.md, "Degraded mode"): only an unreachable Redis trips degraded
//! mode; reads keep serving L1; every mutation answers UNAVAILABLE (`REDIS_UNAVAILABLE`, with
//! RetryInfo) and the replica drops its own L1 copy of the key, so nothing acknowledged is undone
//! when Redis comes back; a GetOrSet miss tells the caller to compute without a lease; error
//! replies (WRONGTYPE…) are mapped to their own status and change no mode.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_proto::v1::cache_service_client::CacheServiceClient;
use tiercache_proto::v1::lock_service_client::LockServiceClient;
use tiercache_server::config::{Config, RedisConfig};
use tiercache_testkit::{wait_for, RedisServer, TestServer};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_types::StatusExt;

type Client = CacheServiceClient<tonic::transport::Channel>;

/// How long one Redis call may take before the replica calls Redis unreachable. Short so the
/// tests are quick; long enough that a loaded two-core machine rarely trips it by accident.
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(500);

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

fn delete(key: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        namespace: "default".into(),
        key: key.into(),
        if_version: None,
    }
}

fn secs(s: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: s,
        nanos: 0,
    })
}

/// A replica on `redis` with short Redis timeouts.
async fn replica(redis: &RedisServer) -> TestServer {
    let mut redis_config = RedisConfig::new(redis.url());
    redis_config.response_timeout = RESPONSE_TIMEOUT;
    redis_config.connect_timeout = RESPONSE_TIMEOUT;
    TestServer::start(Config {
        redis: Some(redis_config),
        ..Config::default()
    })
    .await
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

async fn stats(server: &TestServer) -> pb::GetStatsResponse {
    AdminServiceClient::new(server.channel())
        .get_stats(pb::GetStatsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

async fn degraded(server: &TestServer) -> bool {
    stats(server).await.degraded
}

async fn l1_clears(server: &TestServer) -> u64 {
    stats(server)
        .await
        .namespaces
        .iter()
        .find(|n| n.namespace == "default")
        .map_or(0, |n| n.l1_clears)
}

async fn lease_waits(server: &TestServer) -> u64 {
    stats(server)
        .await
        .namespaces
        .iter()
        .find(|n| n.namespace == "default")
        .map_or(0, |n| n.lease_waits)
}

/// The value a replica serves for `key` (`None`: a miss).
async fn value(c: &mut Client, key: &str) -> Option<String> {
    let r = c.get(get(key)).await.unwrap().into_inner();
    match r.outcome() {
        pb::GetOutcome::Hit => Some(String::from_utf8(r.entry.unwrap().value.to_vec()).unwrap()),
        _ => None,
    }
}

/// Asserts that `status` is the refusal of a mutation while Redis is unreachable.
#[track_caller]
fn assert_refused(status: &tonic::Status) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        status.get_details_error_info().unwrap().reason,
        "REDIS_UNAVAILABLE"
    );
    assert!(status
        .get_details_retry_info()
        .unwrap()
        .retry_delay
        .is_some());
}

/// Makes `server` notice that Redis is unreachable: reads of keys it does not hold go to Redis
/// and time out.
async fn trip(server: &TestServer) {
    let mut c = CacheServiceClient::new(server.channel());
    let mut n = 0;
    wait_for(Duration::from_secs(10), Duration::from_millis(1), || {
        n += 1;
        let key = format!("trip-{n}");
        let mut c = c.clone();
        async move {
            let _ = c.get(get(&key)).await;
            degraded(server).await
        }
    })
    .await
    .expect("the replica enters degraded mode");
    let _ = &mut c;
}

async fn wait_recovered(servers: &[&TestServer]) {
    for s in servers {
        wait_for(
            Duration::from_secs(15),
            Duration::from_millis(20),
            || async { !degraded(s).await },
        )
        .await
        .expect("the replica leaves degraded mode");
    }
}

/// The reproduction from issue 10: a Delete while Redis sleeps must not be acknowledged, and
/// after recovery every replica serves what Redis holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_while_redis_sleeps_is_refused_not_undone() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let (mut ca, mut cb) = (
        CacheServiceClient::new(a.channel()),
        CacheServiceClient::new(b.channel()),
    );
    ca.set(set("k", "old")).await.unwrap();
    assert_eq!(value(&mut ca, "k").await.as_deref(), Some("old"));
    assert_eq!(value(&mut cb, "k").await.as_deref(), Some("old"));

    let sleeping = redis.debug_sleep(Duration::from_secs(3)).await;
    trip(&a).await;
    let refused = ca.delete(delete("k")).await.unwrap_err();
    assert_refused(&refused);
    // A drops its own copy: it never serves what a caller just tried to remove.
    assert_eq!(value(&mut ca, "k").await, None);

    sleeping.await.unwrap();
    wait_recovered(&[&a, &b]).await;
    // The delete was not acknowledged, and it did not happen: both replicas serve Redis's value.
    assert_eq!(value(&mut ca, "k").await.as_deref(), Some("old"));
    assert_eq!(value(&mut cb, "k").await.as_deref(), Some("old"));
    // And a delete now is acknowledged and seen by both.
    let d = ca.delete(delete("k")).await.unwrap().into_inner();
    assert_eq!(d.outcome(), pb::DeleteOutcome::Deleted);
    wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
        let mut cb = cb.clone();
        async move { value(&mut cb, "k").await.is_none() }
    })
    .await
    .expect("B drops the deleted key");
    assert_eq!(value(&mut ca, "k").await, None);
}

/// A crash and restart of Redis: reads keep serving L1, every mutation is refused, recovery is
/// automatic, and what the new (empty) Redis holds is what every replica serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    let mut redis = RedisServer::start();
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let (mut ca, mut cb) = (
        CacheServiceClient::new(a.channel()),
        CacheServiceClient::new(b.channel()),
    );
    ca.set(set("kept", "in-l1")).await.unwrap();
    ca.set(set("k", "v1")).await.unwrap();
    for c in [&mut ca, &mut cb] {
        assert_eq!(value(c, "kept").await.as_deref(), Some("in-l1"));
        assert_eq!(value(c, "k").await.as_deref(), Some("v1"));
    }
    assert_eq!(health(&a, "tiercache.redis").await, ServingStatus::Serving);

    redis.stop();

    // Reads keep serving what L1 holds, from L1.
    let r = ca.get(get("kept")).await.unwrap().into_inner();
    assert_eq!(r.outcome(), pb::GetOutcome::Hit);
    let e = r.entry.unwrap();
    assert_eq!((e.tier(), e.value), (pb::Tier::L1, Bytes::from("in-l1")));
    trip(&a).await;
    trip(&b).await;
    assert_eq!(health(&a, "").await, ServingStatus::Serving);
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { health(&a, "tiercache.redis").await == ServingStatus::NotServing },
    )
    .await
    .expect("the redis health sub-status turns NOT_SERVING");

    // Every mutation is refused, fast (degraded calls skip Redis), and the replica drops its copy.
    let started = Instant::now();
    assert_refused(&ca.set(set("k", "v2")).await.unwrap_err());
    assert!(
        started.elapsed() < Duration::from_millis(250),
        "a refused write does not wait for Redis"
    );
    assert_eq!(value(&mut ca, "k").await, None);
    assert_eq!(value(&mut cb, "k").await.as_deref(), Some("v1"));
    assert_refused(&cb.delete(delete("k")).await.unwrap_err());
    assert_eq!(value(&mut cb, "k").await, None);
    assert_refused(
        &ca.set_many(pb::SetManyRequest {
            requests: vec![set("kept", "x"), set("other", "y")],
        })
        .await
        .unwrap_err(),
    );
    assert_eq!(value(&mut ca, "kept").await, None);
    assert_refused(
        &ca.fill(pb::FillRequest {
            namespace: "default".into(),
            key: "kept2".into(),
            lease_token: "no-such-lease".into(),
            value: Bytes::from("x"),
            ..Default::default()
        })
        .await
        .unwrap_err(),
    );
    assert_refused(
        &ca.fill_many(pb::FillManyRequest {
            requests: vec![pb::FillRequest {
                namespace: "default".into(),
                key: "kept".into(),
                lease_token: "no-such-lease".into(),
                value: Bytes::from("x"),
                ..Default::default()
            }],
        })
        .await
        .unwrap_err(),
    );
    assert_refused(
        &ca.release_lease(pb::ReleaseLeaseRequest {
            namespace: "default".into(),
            key: "kept".into(),
            lease_token: "no-such-lease".into(),
        })
        .await
        .unwrap_err(),
    );
    assert_refused(
        &ca.invalidate_tags(pb::InvalidateTagsRequest {
            namespace: "default".into(),
            tags: vec!["t".into()],
        })
        .await
        .unwrap_err(),
    );
    assert_refused(
        &ca.flush_namespace(pb::FlushNamespaceRequest {
            namespace: "default".into(),
        })
        .await
        .unwrap_err(),
    );
    let err = LockServiceClient::new(a.channel())
        .acquire_lock(pb::AcquireLockRequest {
            namespace: "default".into(),
            name: "l".into(),
            ttl: secs(1),
            max_wait: None,
        })
        .await
        .unwrap_err();
    assert_refused(&err);

    // A GetOrSet miss: compute without a lease. Callers of one key on one replica coalesce: one
    // computes at once, the others wait (bounded by their max_wait) rather than all computing.
    let waits_before = lease_waits(&a).await;
    let mut callers = Vec::new();
    for _ in 0..10 {
        let mut c = ca.clone();
        callers.push(tokio::spawn(async move {
            c.get_or_set(pb::GetOrSetRequest {
                namespace: "default".into(),
                key: "cold".into(),
                max_wait: secs(1),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    for t in callers {
        let r = t.await.unwrap();
        assert_eq!(r.outcome(), pb::GetOrSetOutcome::Compute);
        assert!(r.lease.is_none(), "no lease while degraded");
    }
    assert_eq!(
        lease_waits(&a).await - waits_before,
        9,
        "one caller computed at once, the other nine waited"
    );

    // Recovery is automatic; the new Redis is empty and every replica serves that.
    redis.restart();
    wait_recovered(&[&a, &b]).await;
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { health(&a, "tiercache.redis").await == ServingStatus::Serving },
    )
    .await
    .expect("the redis health sub-status turns SERVING again");
    for c in [&mut ca, &mut cb] {
        for k in ["kept", "k", "other", "cold"] {
            assert_eq!(value(c, k).await, None, "{k} after restart");
        }
    }
    ca.set(set("after", "ok")).await.unwrap();
    assert_eq!(value(&mut cb, "after").await.as_deref(), Some("ok"));
    let r = ca
        .get_or_set(pb::GetOrSetRequest {
            namespace: "default".into(),
            key: "cold".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Lease, "leases are back");
}

/// An error reply (WRONGTYPE on one key) is INTERNAL with the Redis error class, trips nothing,
/// clears nothing, and other keys keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_type_in_redis_is_an_error_not_an_outage() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let (mut ca, mut cb) = (
        CacheServiceClient::new(a.channel()),
        CacheServiceClient::new(b.channel()),
    );
    ca.set(set("good", "v")).await.unwrap();
    assert_eq!(value(&mut ca, "good").await.as_deref(), Some("v"));
    let clears = l1_clears(&a).await;

    let mut conn = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg("tc:{default:bad}:e")
        .arg("not an entry")
        .query_async(&mut conn)
        .await
        .unwrap();

    let errors = [
        ca.get(get("bad")).await.unwrap_err(),
        ca.set(set("bad", "x")).await.unwrap_err(),
        ca.delete(delete("bad")).await.unwrap_err(),
        cb.get(get("bad")).await.unwrap_err(),
    ];
    for e in &errors {
        assert_eq!(e.code(), Code::Internal, "{e:?}");
        assert_eq!(
            e.get_details_error_info().unwrap().reason,
            "REDIS_WRONGTYPE"
        );
    }
    // Nothing tripped, nothing was cleared, other keys keep working.
    for s in [&a, &b] {
        assert!(!degraded(s).await);
        assert_eq!(health(s, "tiercache.redis").await, ServingStatus::Serving);
    }
    let r = ca.get(get("good")).await.unwrap().into_inner();
    assert_eq!(r.entry.unwrap().tier(), pb::Tier::L1, "L1 was not cleared");
    assert_eq!(l1_clears(&a).await, clears);
    ca.set(set("good2", "w")).await.unwrap();
    assert_eq!(value(&mut cb, "good2").await.as_deref(), Some("w"));
    // The probe period passes: still not degraded (nothing loops).
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!degraded(&a).await);
    assert_eq!(l1_clears(&a).await, clears);
}

/// What a key may hold: the values the acknowledged operations (and possibly-applied ambiguous
/// ones) allow.
type Model = HashMap<String, Vec<Option<String>>>;

/// Runs op `i` on `c` and updates the model with what it is allowed to have done. Strict ops are
/// refused without reaching Redis (the replica is degraded): a refusal then means "no effect".
async fn op(c: &mut Client, i: usize, model: &mut Model, refused_means_no_effect: bool) -> bool {
    let key = format!("k{}", (i * 7) % 12);
    let (r, new) = if i % 3 == 2 {
        (c.delete(delete(&key)).await.map(|_| ()), None)
    } else {
        let v = format!("v{i}");
        (c.set(set(&key, &v)).await.map(|_| ()), Some(v))
    };
    let allowed = model.entry(key).or_insert_with(|| vec![None]);
    match r {
        Ok(()) => {
            *allowed = vec![new];
            true
        }
        Err(s) => {
            assert_refused(&s);
            if !refused_means_no_effect && !allowed.contains(&new) {
                allowed.push(new);
            }
            false
        }
    }
}

/// Sets and Deletes across an outage: after recovery every replica serves exactly what the
/// acknowledged operations say; refused operations had no effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_an_outage_and_refused_ones_do_not_apply() {
    let redis = RedisServer::start();
    let (a, b) = (replica(&redis).await, replica(&redis).await);
    let mut clients = [
        CacheServiceClient::new(a.channel()),
        CacheServiceClient::new(b.channel()),
    ];
    let mut model = Model::new();
    for i in 0..40 {
        op(&mut clients[i % 2], i, &mut model, false).await;
    }
    // Both replicas hold every key in L1.
    for c in clients.iter_mut() {
        for k in model.keys() {
            value(c, k).await;
        }
    }
    clients[0].set(set("amb", "before")).await.unwrap();
    for c in clients.iter_mut() {
        assert_eq!(value(c, "amb").await.as_deref(), Some("before"));
    }

    let sleeping = redis.debug_sleep(Duration::from_secs(3)).await;
    // B discovers the outage with a write: it times out, so it may or may not apply once Redis
    // answers again, but B no longer serves its old copy.
    let started = Instant::now();
    let err = clients[1].set(set("amb", "during")).await.unwrap_err();
    assert_refused(&err);
    assert!(
        started.elapsed() >= RESPONSE_TIMEOUT / 2,
        "the write was sent"
    );
    assert_eq!(value(&mut clients[1], "amb").await, None);
    trip(&a).await;
    assert!(degraded(&b).await);
    for i in 40..80 {
        let acknowledged = op(&mut clients[i % 2], i, &mut model, true).await;
        assert!(!acknowledged, "op {i} acknowledged while degraded");
        // While degraded a replica serves nothing the model forbids.
        let key = format!("k{}", (i * 7) % 12);
        for c in clients.iter_mut() {
            let v = value(c, &key).await;
            assert!(
                v.is_none() || model[&key].contains(&v),
                "{key} served {v:?} while degraded, allowed {:?}",
                model[&key]
            );
        }
    }
    sleeping.await.unwrap();
    wait_recovered(&[&a, &b]).await;
    for i in 80..100 {
        op(&mut clients[i % 2], i, &mut model, false).await;
    }

    // Events of the last writes may still be in flight to the other replica: poll, bounded.
    for (key, allowed) in &model {
        wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
            let mut clients = clients.clone();
            async move {
                let va = value(&mut clients[0], key).await;
                let vb = value(&mut clients[1], key).await;
                va == vb && allowed.contains(&va)
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{key}: replicas disagree with the model {allowed:?}"));
        if allowed.len() == 1 {
            assert_eq!(value(&mut clients[0], key).await, allowed[0], "{key}");
        }
    }
    let va = value(&mut clients[0], "amb").await;
    let vb = value(&mut clients[1], "amb").await;
    assert_eq!(
        va, vb,
        "both replicas serve what Redis holds for the ambiguous write"
    );
    assert!(matches!(va.as_deref(), Some("before") | Some("during")));
}

/// Memory-only mode has no Redis to lose: writes are always acknowledged.
#[tokio::test]
async fn memory_only_is_never_degraded() {
    let server = TestServer::memory().await;
    let mut c = CacheServiceClient::new(server.channel());
    c.set(set("k", "v")).await.unwrap();
    assert_eq!(value(&mut c, "k").await.as_deref(), Some("v"));
    let d = c.delete(delete("k")).await.unwrap().into_inner();
    assert_eq!(d.outcome(), pb::DeleteOutcome::Deleted);
    assert!(!degraded(&server).await);
}

/// Issue 19, finding 8: an idle replica notices a Redis outage by itself. With no cache traffic
/// at all, a background health check turns degraded mode and the `tiercache.redis` health
/// sub-status within about a second of Redis stalling, so the first write after it is refused at
/// once instead of waiting for the Redis response timeout; both recover when Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_replica_notices_an_outage_within_a_second() {
    let redis = RedisServer::start();
    let a = replica(&redis).await;
    let mut c = CacheServiceClient::new(a.channel());
    c.set(set("k", "v")).await.unwrap();
    c.set(set("kept", "in-l1")).await.unwrap();
    assert_eq!(value(&mut c, "kept").await.as_deref(), Some("in-l1"));
    assert_eq!(health(&a, "tiercache.redis").await, ServingStatus::Serving);
    assert!(!degraded(&a).await);

    // From here on no cache call until the checks: only GetStats and health, which touch no
    // Redis.
    let sleeping = redis.debug_sleep(Duration::from_secs(4)).await;
    let stalled = Instant::now();
    wait_for(
        Duration::from_millis(1500),
        Duration::from_millis(20),
        || async {
            degraded(&a).await && health(&a, "tiercache.redis").await == ServingStatus::NotServing
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "an idle replica did not notice the stall within 1.5 s ({:?} after it): {e}",
            stalled.elapsed()
        )
    });
    let noticed = stalled.elapsed();
    // Degraded mode proper: the first write is refused without a Redis round trip.
    let start = Instant::now();
    let refused = c.set(set("k", "w")).await.unwrap_err();
    let took = start.elapsed();
    assert_refused(&refused);
    assert!(
        took < RESPONSE_TIMEOUT / 2,
        "the first write after the stall waited {took:?} for Redis (noticed after {noticed:?})"
    );
    // Reads keep serving L1.
    assert_eq!(value(&mut c, "kept").await.as_deref(), Some("in-l1"));
    eprintln!("the idle replica noticed the stall after {noticed:?}");

    sleeping.await.unwrap();
    let resumed = Instant::now();
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async {
            !degraded(&a).await && health(&a, "tiercache.redis").await == ServingStatus::Serving
        },
    )
    .await
    .expect("the replica recovers when Redis answers again");
    eprintln!(
        "recovered {:?} after Redis answered again",
        resumed.elapsed()
    );
    c.set(set("k", "w")).await.unwrap();
    assert_eq!(value(&mut c, "k").await.as_deref(), Some("w"));
}
