//! GetOrSet, leases, stale-while-revalidate, fail-safe and locks over real gRPC: three replicas
//! on one real Redis, and the same contract on one memory-only server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_client::AdminServiceClient;
use tiercache_server::config::{Config, PolicyConfig};
use tiercache_testkit::req::{self, duration as dur, fill};
use tiercache_testkit::rpc::{self, CacheClient as Client};
use tiercache_testkit::{wait_for, Fleet, FleetBuilder};

/// Three replicas on one Redis, or one memory-only server; either way reached through three
/// connected channels, so connection set-up is not part of any measured latency and no
/// connection carries more than a third of the callers.
async fn fleet(on_redis: bool) -> Fleet {
    let builder = if on_redis {
        FleetBuilder::redis(3)
    } else {
        FleetBuilder::memory()
    };
    builder.config(config()).channels(3).start().await
}

fn config() -> Config {
    Config {
        defaults: PolicyConfig {
            lease_ttl: Some(Duration::from_secs(5)),
            ..PolicyConfig::default()
        },
        ..Config::default()
    }
}

/// Sums a counter over every replica's stats for namespace `default`.
async fn stat(fleet: &Fleet, f: fn(&pb::NamespaceStats) -> u64) -> u64 {
    let mut total = 0;
    for s in &fleet.servers {
        let mut admin = AdminServiceClient::new(s.channel());
        total += f(&rpc::stats(&mut admin, req::stats()).await);
    }
    total
}

fn gos(key: &str) -> pb::GetOrSetRequest {
    pb::GetOrSetRequest {
        max_wait: dur(Duration::from_secs(10)),
        ..req::get_or_set(key)
    }
}

/// What one cache-aside caller saw.
struct Caller {
    value: Bytes,
    computed: bool,
    latency: Duration,
}

/// The cache-aside loop a client SDK runs: GetOrSet; on a lease compute (sleep) and Fill.
async fn cache_aside(
    mut c: Client,
    key: String,
    compute: Duration,
    origin_calls: Arc<AtomicU64>,
) -> Caller {
    let start = Instant::now();
    let r = c.get_or_set(gos(&key)).await.unwrap().into_inner();
    match r.outcome() {
        pb::GetOrSetOutcome::Hit | pb::GetOrSetOutcome::Filled => Caller {
            value: r.entry.unwrap().value,
            computed: false,
            latency: start.elapsed(),
        },
        pb::GetOrSetOutcome::Lease => {
            origin_calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(compute).await;
            let value = format!("value-of-{key}");
            let f = c
                .fill(fill(&key, &r.lease.unwrap().token, &value))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(f.outcome(), pb::FillOutcome::Stored);
            Caller {
                value: Bytes::from(value),
                computed: true,
                latency: start.elapsed(),
            }
        }
        o => panic!("unexpected outcome {o:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn stampede(fleet: Fleet, label: &str, keys: usize, callers_per_key: usize) {
    const FILL_TIME: Duration = Duration::from_millis(200);
    let origin = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for k in 0..keys {
        for i in 0..callers_per_key {
            let key = format!("cold-{k}");
            tasks.push(tokio::spawn(cache_aside(
                fleet.cache(i),
                key,
                FILL_TIME,
                origin.clone(),
            )));
        }
    }
    let mut waiters = Vec::new();
    for (n, t) in tasks.into_iter().enumerate() {
        let c = t.await.unwrap();
        assert_eq!(
            c.value,
            Bytes::from(format!("value-of-cold-{}", n / callers_per_key))
        );
        if !c.computed {
            waiters.push(c.latency.saturating_sub(FILL_TIME));
        }
    }
    assert_eq!(
        origin.load(Ordering::SeqCst),
        keys as u64,
        "exactly one origin call per cold key"
    );
    assert_eq!(stat(&fleet, |s| s.leases_granted).await, keys as u64);
    assert_eq!(stat(&fleet, |s| s.fills).await, keys as u64);
    waiters.sort();
    eprintln!(
        "stampede [{label}]: {keys} keys x {callers_per_key} callers on {} replica(s): \
         {} origin calls, {} leases; waiter latency minus fill time p50 {:?} p99 {:?} max {:?}",
        fleet.servers.len(),
        origin.load(Ordering::SeqCst),
        stat(&fleet, |s| s.leases_granted).await,
        percentile(&waiters, 0.5),
        percentile(&waiters, 0.99),
        waiters.last().unwrap()
    );
}

async fn lease_revoked_by_delete(fleet: Fleet) {
    let mut c = fleet.cache(0);
    let r = c.get_or_set(gos("revoke")).await.unwrap().into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Lease);
    let token = r.lease.unwrap().token;
    fleet.cache(1).delete(req::delete("revoke")).await.unwrap();
    let f = c
        .fill(fill("revoke", &token, "stale"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.outcome(), pb::FillOutcome::LeaseRevoked);
    let r = c.get_or_set(gos("revoke")).await.unwrap().into_inner();
    assert_eq!(
        r.outcome(),
        pb::GetOrSetOutcome::Lease,
        "a new lease after the revoked one"
    );
    // A Set revokes too.
    let token = r.lease.unwrap().token;
    c.set(req::set("revoke", "set")).await.unwrap();
    let f = c
        .fill(fill("revoke", &token, "late"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.outcome(), pb::FillOutcome::LeaseRevoked);
    let g = c.get(req::get("revoke")).await.unwrap().into_inner();
    assert_eq!(g.entry.unwrap().value, Bytes::from("set"));
}

async fn inspect_shows_the_outstanding_lease(fleet: Fleet) {
    let mut c = fleet.cache(0);
    let r = c.get_or_set(gos("inspected")).await.unwrap().into_inner();
    let token = r.lease.unwrap().token;
    let mut admin = fleet.admin(1);
    let inspect = || req::inspect("inspected");
    let i = admin.inspect(inspect()).await.unwrap().into_inner();
    assert!(i.lease_held, "{i:?}");
    assert!(i.lease_remaining.unwrap().seconds <= 5);
    assert!(i.explanation.contains("lease"), "{}", i.explanation);
    c.fill(fill("inspected", &token, "v")).await.unwrap();
    let i = admin.inspect(inspect()).await.unwrap().into_inner();
    assert!(!i.lease_held, "{i:?}");
    assert_eq!(i.lease_born, 0);
}

async fn holder_vanishes(fleet: Fleet) {
    let lease_ttl = Duration::from_millis(400);
    let req = || pb::GetOrSetRequest {
        lease_ttl: dur(lease_ttl),
        max_wait: dur(Duration::from_secs(5)),
        ..gos("vanish")
    };
    // The first caller takes the lease and disappears with its connection.
    {
        let mut c = fleet.cache(0);
        let r = c.get_or_set(req()).await.unwrap().into_inner();
        assert_eq!(r.outcome(), pb::GetOrSetOutcome::Lease);
    }
    let start = Instant::now();
    let origin = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..12 {
        let mut c = fleet.cache(i);
        let origin = origin.clone();
        let r = req();
        tasks.push(tokio::spawn(async move {
            let g = c.get_or_set(r).await.unwrap().into_inner();
            match g.outcome() {
                pb::GetOrSetOutcome::Lease => {
                    origin.fetch_add(1, Ordering::SeqCst);
                    let f = c
                        .fill(fill("vanish", &g.lease.unwrap().token, "second"))
                        .await
                        .unwrap()
                        .into_inner();
                    assert_eq!(f.outcome(), pb::FillOutcome::Stored);
                }
                pb::GetOrSetOutcome::Filled | pb::GetOrSetOutcome::Hit => {
                    assert_eq!(g.entry.unwrap().value, Bytes::from("second"))
                }
                o => panic!("{o:?}"),
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        origin.load(Ordering::SeqCst),
        1,
        "one waiter took over the expired lease"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "took over only after expiry ({took:?})"
    );
    eprintln!("holder vanished: a waiter took over after {took:?} (lease ttl {lease_ttl:?})");
}

async fn release_promotes_a_waiter_and_caches_nothing(fleet: Fleet) {
    let mut c = fleet.cache(0);
    let r = c.get_or_set(gos("fails")).await.unwrap().into_inner();
    let token = r.lease.unwrap().token;
    let mut w = fleet.cache(1);
    let waiter =
        tokio::spawn(async move { w.get_or_set(gos("fails")).await.unwrap().into_inner() });
    // Make sure the waiter is waiting before the computation fails.
    wait_for(Duration::from_secs(5), Duration::from_millis(5), || async {
        stat(&fleet, |s| s.lease_waits).await >= 1
    })
    .await
    .unwrap();
    let started = Instant::now();
    let rel = rpc::release_lease(&mut c, req::release_lease("fails", &token)).await;
    assert_eq!(rel.outcome(), pb::ReleaseLeaseOutcome::Released);
    let promoted = waiter.await.unwrap();
    assert_eq!(
        promoted.outcome(),
        pb::GetOrSetOutcome::Lease,
        "the waiter computes next"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "promoted before the lease ttl"
    );
    // Releasing twice, or with a stale token, changes nothing.
    let rel = rpc::release_lease(&mut c, req::release_lease("fails", &token)).await;
    assert_eq!(rel.outcome(), pb::ReleaseLeaseOutcome::NotHeld);
}

async fn stale_while_revalidate_and_fail_safe(fleet: Fleet) {
    let mut c = fleet.cache(0);
    c.set(pb::SetRequest {
        ttl: dur(Duration::from_millis(150)),
        stale_ttl: dur(Duration::from_millis(1500)),
        ..req::set("swr", "old")
    })
    .await
    .unwrap();
    let swr = || pb::GetOrSetRequest {
        allow_stale: true,
        refresh_stale: true,
        ..gos("swr")
    };
    // The same read without taking the refresh lease.
    let peek = || pb::GetOrSetRequest {
        refresh_stale: false,
        ..swr()
    };
    wait_for(Duration::from_secs(5), Duration::from_millis(5), || {
        let mut c = c.clone();
        async move {
            let r = c.get_or_set(peek()).await.unwrap().into_inner();
            r.entry.is_some_and(|e| e.stale)
        }
    })
    .await
    .expect("entry turns stale");

    // 100 concurrent readers in the stale window: all answered at once with the stale value,
    // exactly one refresh lease.
    let mut tasks = Vec::new();
    for i in 0..100 {
        let mut c = fleet.cache(i);
        let r = swr();
        tasks.push(tokio::spawn(async move {
            c.get_or_set(r).await.unwrap().into_inner()
        }));
    }
    let mut leases = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.outcome(), pb::GetOrSetOutcome::Hit);
        let e = r.entry.unwrap();
        assert!(e.stale);
        assert_eq!(e.value, Bytes::from("old"));
        if let Some(l) = r.lease {
            assert!(l.refresh);
            leases.push(l.token);
        }
    }
    assert_eq!(leases.len(), 1, "exactly one refresh lease");

    // Fail-safe: the refresh fails; the stale value keeps serving, and the next reader may take
    // the refresh lease again.
    rpc::release_lease(&mut c, req::release_lease("swr", &leases.pop().unwrap())).await;
    let r = c.get_or_set(swr()).await.unwrap().into_inner();
    assert_eq!(r.entry.as_ref().unwrap().value, Bytes::from("old"));
    let refresh = r
        .lease
        .expect("a new refresh lease after the failed one")
        .token;
    rpc::release_lease(&mut c, req::release_lease("swr", &refresh)).await;
    // When the stale window ends the entry is gone: a miss with a lease.
    wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
        let mut c = c.clone();
        async move {
            let r = c.get_or_set(peek()).await.unwrap().into_inner();
            if r.outcome() == pb::GetOrSetOutcome::Lease {
                rpc::release_lease(&mut c, req::release_lease("swr", &r.lease.unwrap().token))
                    .await;
                return true;
            }
            assert_eq!(
                r.entry.unwrap().value,
                Bytes::from("old"),
                "stale until the window ends"
            );
            false
        }
    })
    .await
    .expect("a miss with a lease after the stale window");

    // A successful refresh makes reads fresh again.
    let r = c.get_or_set(swr()).await.unwrap().into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Lease);
    c.fill(fill("swr", &r.lease.unwrap().token, "new"))
        .await
        .unwrap();
    let r = c.get_or_set(swr()).await.unwrap().into_inner();
    let e = r.entry.unwrap();
    assert!(!e.stale);
    assert_eq!(e.value, Bytes::from("new"));
}

async fn negative_caching(fleet: Fleet) {
    let mut c = fleet.cache(0);
    let r = c.get_or_set(gos("nobody")).await.unwrap().into_inner();
    let f = c
        .fill(pb::FillRequest {
            absent: true,
            value: Bytes::new(),
            ..fill("nobody", &r.lease.unwrap().token, "")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.outcome(), pb::FillOutcome::Stored);
    let r = fleet
        .cache(1)
        .get_or_set(gos("nobody"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Hit);
    let e = r.entry.unwrap();
    assert!(e.absent);
    assert!(
        e.fresh_remaining.unwrap().seconds <= 30,
        "negative TTL applies"
    );
}

async fn wait_bound_is_honoured(fleet: Fleet) {
    let mut c = fleet.cache(0);
    let r = c.get_or_set(gos("slow")).await.unwrap().into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Lease);
    let bounded = pb::GetOrSetRequest {
        max_wait: dur(Duration::from_millis(200)),
        ..gos("slow")
    };
    let start = Instant::now();
    let r = fleet
        .cache(1)
        .get_or_set(bounded.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Compute);
    assert!(start.elapsed() >= Duration::from_millis(200));
    let err = fleet
        .cache(2)
        .get_or_set(pb::GetOrSetRequest {
            on_wait_timeout: pb::WaitTimeoutAction::Unavailable as i32,
            ..bounded
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable);
    use tonic_types::StatusExt;
    assert!(err.get_details_retry_info().is_some());
    // The gRPC deadline bounds the wait too: the answer comes before it, with a margin.
    let mut req = tonic::Request::new(gos("slow"));
    req.set_timeout(Duration::from_secs(1));
    let start = Instant::now();
    let r = fleet.cache(1).get_or_set(req).await.unwrap().into_inner();
    assert_eq!(r.outcome(), pb::GetOrSetOutcome::Compute);
    assert!(start.elapsed() < Duration::from_secs(1));
}

async fn get_or_set_many_batches(fleet: Fleet) {
    let mut c = fleet.cache(0);
    c.set(req::set("b1", "present")).await.unwrap();
    let r = c
        .get_or_set_many(pb::GetOrSetManyRequest {
            namespace: "default".into(),
            keys: vec!["b1".into(), "b2".into(), "b3".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let outcomes: Vec<_> = r.results.iter().map(|r| r.outcome()).collect();
    assert_eq!(
        outcomes,
        vec![
            pb::GetOrSetOutcome::Hit,
            pb::GetOrSetOutcome::Lease,
            pb::GetOrSetOutcome::Lease
        ]
    );
    let fills = r.results[1..]
        .iter()
        .map(|r| {
            fill(
                &r.key,
                &r.lease.as_ref().unwrap().token,
                &format!("v-{}", r.key),
            )
        })
        .collect();
    let f = c
        .fill_many(pb::FillManyRequest { requests: fills })
        .await
        .unwrap()
        .into_inner();
    assert!(f
        .responses
        .iter()
        .all(|r| r.outcome() == pb::FillOutcome::Stored));
    let r = fleet
        .cache(1)
        .get_or_set_many(pb::GetOrSetManyRequest {
            namespace: "default".into(),
            keys: vec!["b1".into(), "b2".into(), "b3".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let values: Vec<_> = r
        .results
        .iter()
        .map(|r| r.entry.as_ref().unwrap().value.clone())
        .collect();
    assert_eq!(
        values,
        vec![
            Bytes::from("present"),
            Bytes::from("v-b2"),
            Bytes::from("v-b3")
        ]
    );
}

async fn locks_serialize_holders(fleet: Fleet) {
    // A counter kept outside tiercache, incremented with a read, a pause and a write: lost
    // updates show if two holders ever overlap.
    let counter = Arc::new(AtomicU64::new(0));
    let intervals = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut l = fleet.locks(i);
        let counter = counter.clone();
        let intervals = intervals.clone();
        tasks.push(tokio::spawn(async move {
            let g = l
                .acquire_lock(req::acquire_lock(
                    "counter",
                    Duration::from_secs(10),
                    Duration::from_secs(30),
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(g.outcome(), pb::AcquireLockOutcome::Acquired);
            let start = Instant::now();
            let v = counter.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(2)).await;
            counter.store(v + 1, Ordering::SeqCst);
            let end = Instant::now();
            intervals.lock().push((g.fencing_token, start, end));
            let r = l
                .release_lock(req::release_lock("counter", &g.owner_token))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.outcome(), pb::LockOwnershipOutcome::Ok);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(counter.load(Ordering::SeqCst), 50);
    let mut iv = intervals.lock().clone();
    iv.sort_by_key(|i| i.0);
    for w in iv.windows(2) {
        assert!(w[0].0 < w[1].0, "fencing tokens strictly increase");
        assert!(
            w[0].2 <= w[1].1,
            "holders {} and {} overlapped",
            w[0].0,
            w[1].0
        );
    }

    // A holder that never releases expires; the next acquirer proceeds, and the late release
    // or renew of the expired holder changes nothing.
    let mut l = fleet.locks(0);
    let acquire = |ttl: Duration, wait: Duration| req::acquire_lock("stuck", ttl, wait);
    let first = l
        .acquire_lock(acquire(Duration::from_millis(300), Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), pb::AcquireLockOutcome::Acquired);
    let busy = fleet
        .locks(1)
        .acquire_lock(acquire(Duration::from_secs(5), Duration::ZERO))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(busy.outcome(), pb::AcquireLockOutcome::Timeout);
    let second = fleet
        .locks(2)
        .acquire_lock(acquire(Duration::from_secs(5), Duration::from_secs(5)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.outcome(), pb::AcquireLockOutcome::Acquired);
    assert!(second.fencing_token > first.fencing_token);
    let late = l
        .release_lock(req::release_lock("stuck", &first.owner_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.outcome(), pb::LockOwnershipOutcome::NotHeld);
    let renew = l
        .renew_lock(req::renew_lock(
            "stuck",
            &first.owner_token,
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renew.outcome(), pb::LockOwnershipOutcome::NotHeld);
    // The rightful owner can renew.
    let renew = fleet
        .locks(2)
        .renew_lock(req::renew_lock(
            "stuck",
            &second.owner_token,
            Duration::from_secs(5),
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(renew.outcome(), pb::LockOwnershipOutcome::Ok);
}

async fn stampede_one_key(fleet: Fleet) {
    let n = if fleet.servers.len() == 3 {
        "3 replicas"
    } else {
        "memory"
    };
    stampede(fleet, n, 1, 300).await;
}

async fn stampede_twenty_keys(fleet: Fleet) {
    let n = if fleet.servers.len() == 3 {
        "3 replicas, 20 keys"
    } else {
        "memory, 20 keys"
    };
    stampede(fleet, n, 20, 15).await;
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod redis_replicas {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::fleet(true).await).await } )*
        }
        mod memory_only {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::fleet(false).await).await } )*
        }
    };
}

contract!(
    stampede_one_key,
    stampede_twenty_keys,
    lease_revoked_by_delete,
    inspect_shows_the_outstanding_lease,
    holder_vanishes,
    release_promotes_a_waiter_and_caches_nothing,
    stale_while_revalidate_and_fail_safe,
    negative_caching,
    wait_bound_is_honoured,
    get_or_set_many_batches,
    locks_serialize_holders,
);

#[tokio::test]
async fn locks_are_unavailable_while_redis_is_down() {
    let mut fleet = FleetBuilder::redis(1).config(config()).start().await;
    let mut l = fleet.locks(0);
    fleet.redis.as_mut().unwrap().stop();
    let err = l
        .acquire_lock(req::acquire_lock(
            "x",
            Duration::from_secs(1),
            Duration::ZERO,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::Unavailable,
        "never a silent local lock"
    );
}
