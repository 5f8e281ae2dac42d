//! Memory bounds of the engine, through `Cache`: the L1 budget every namespace shares, and the
//! memory-only maps (tag marks, leases, locks) and event rings that must shrink back once
//! nothing holds them.

use std::time::Duration;

use bytes::Bytes;
use tiercache_core::{
    Cache, CacheConfig, GetOrSetOptions, GetOrSetResult, LockAcquire, NamespacePolicy,
    RedisOptions, WriteArgs,
};
use tiercache_testkit::{wait_for, RedisServer};

const BUDGET: u64 = 1024 * 1024;

fn shared_budget() -> CacheConfig {
    CacheConfig {
        dynamic_namespaces: true,
        l1_max_bytes: BUDGET,
        ..CacheConfig::default()
    }
}

async fn fill_many_namespaces(cache: &Cache) {
    let value = Bytes::from(vec![b'v'; 1000]);
    for n in 0..50 {
        let ns = cache.namespace(&format!("ns-{n}")).unwrap();
        for k in 0..100 {
            cache
                .set(
                    &ns,
                    &format!("key-{k}"),
                    WriteArgs {
                        value: value.clone(),
                        ..WriteArgs::default()
                    },
                )
                .await
                .unwrap();
            // Two-tier mode fills L1 on reads.
            cache
                .get(&ns, &format!("key-{k}"), Default::default())
                .await
                .unwrap();
        }
    }
}

fn assert_within_budget(cache: &Cache) {
    // 50 namespaces × 100 entries × ~1.6 KB = ~8 MB written against a 1 MiB budget.
    let used = cache.l1().used_bytes();
    let per_namespace: u64 = cache.namespaces().iter().map(|ns| ns.l1_usage().1).sum();
    assert!(used <= BUDGET, "L1 holds {used} bytes, budget {BUDGET}");
    assert!(
        per_namespace <= BUDGET,
        "namespaces account {per_namespace} bytes, budget {BUDGET}"
    );
    assert!(used > BUDGET / 2, "the budget is used ({used} bytes)");
}

#[tokio::test]
async fn l1_across_many_namespaces_stays_within_the_shared_budget_memory_only() {
    let cache = Cache::memory(shared_budget());
    fill_many_namespaces(&cache).await;
    assert_within_budget(&cache);
}

#[tokio::test]
async fn l1_across_many_namespaces_stays_within_the_shared_budget_two_tier() {
    let redis = RedisServer::start();
    let cache = Cache::two_tier(
        shared_budget(),
        RedisOptions {
            url: redis.url(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            key_prefix: "tc".into(),
            ..RedisOptions::default()
        },
    )
    .await
    .unwrap();
    fill_many_namespaces(&cache).await;
    assert_within_budget(&cache);
}

fn short_lived() -> CacheConfig {
    CacheConfig {
        namespaces: vec![(
            "short".into(),
            NamespacePolicy {
                default_ttl: Duration::from_millis(100),
                max_ttl: Duration::from_millis(200),
                negative_ttl: Duration::from_millis(100),
                lease_ttl: Duration::from_millis(100),
                lease_ttl_max: Duration::from_millis(200),
                ..NamespacePolicy::default()
            },
        )],
        ..CacheConfig::default()
    }
}

#[tokio::test]
async fn memory_only_maps_shrink_back_once_nothing_is_held() {
    let cache = Cache::memory(short_lived());
    let ns = cache.namespace("short").unwrap();
    for i in 0..1000 {
        cache
            .invalidate_tags(&ns, &[format!("tag-{i}")])
            .await
            .unwrap();
        let r = cache
            .get_or_set(
                &ns,
                &format!("key-{i}"),
                GetOrSetOptions {
                    wait: Duration::ZERO,
                    allow_stale: false,
                    refresh_stale: false,
                    lease_ttl: None,
                    may_lease: true,
                },
            )
            .await
            .unwrap();
        assert!(matches!(r, GetOrSetResult::Lease(_)), "{r:?}");
    }
    let mut fences = Vec::new();
    for i in 0..1000 {
        let got = cache
            .acquire_lock(
                &ns,
                &format!("lock-{i}"),
                Duration::from_millis(100),
                Duration::ZERO,
            )
            .await
            .unwrap();
        let LockAcquire::Acquired {
            owner_token,
            fencing_token,
        } = got
        else {
            panic!("free lock not acquired")
        };
        fences.push(fencing_token);
        if i % 2 == 0 {
            assert!(cache
                .release_lock(&ns, &format!("lock-{i}"), &owner_token)
                .await
                .unwrap());
        }
    }
    let f = ns.footprint();
    assert_eq!(f.tag_marks, 1000);
    assert_eq!(f.leases, 1000);
    assert_eq!(f.locks, 500, "a released lock leaves no slot");
    // Leases and locks expire after 100 ms; marks once no entry born before them can be alive
    // (200 ms max TTL + 200 ms stale window + 200 ms longest lease).
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async {
            let f = ns.footprint();
            f.tag_marks == 0 && f.leases == 0 && f.locks == 0
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}: {:?}", ns.footprint()));
    // Fencing tokens keep increasing per lock although its slot was dropped.
    let LockAcquire::Acquired { fencing_token, .. } = cache
        .acquire_lock(&ns, "lock-0", Duration::from_millis(100), Duration::ZERO)
        .await
        .unwrap()
    else {
        panic!("free lock not acquired")
    };
    assert!(
        fencing_token > fences[0],
        "{fencing_token} after {}",
        fences[0]
    );
    assert!(fences.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test]
async fn an_unwatched_namespace_holds_no_event_ring() {
    let cache = Cache::memory(short_lived());
    let ns = cache.namespace("short").unwrap();
    assert!(!ns.footprint().event_ring);
    let watch = cache.watch(&ns).await.unwrap();
    assert!(ns.footprint().event_ring);
    drop(watch);
    cache.invalidate_tags(&ns, &["t".into()]).await.unwrap();
    assert!(
        !ns.footprint().event_ring,
        "freed by the first event after the last watcher left"
    );
}
