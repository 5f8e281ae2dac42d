//! One conformance suite for the engine, run against both stores behind it: the local store
//! (memory-only mode) and the Redis store (L1 + a real Redis), so the two cannot drift. It goes
//! through `Cache`, the only way in: the store boundary (`tiercache_core::store::Store`) is what
//! both modes share below it.

use std::time::Duration;

use bytes::Bytes;
use tiercache_core::{
    Cache, CacheConfig, DeleteOutcome, Lookup, NamespacePolicy, ReadOptions, RedisOptions,
    SetOutcome, Tier, WriteArgs, WriteCondition,
};
use tiercache_testkit::{wait_for, RedisServer};

fn config() -> CacheConfig {
    CacheConfig {
        namespaces: vec![("default".into(), NamespacePolicy::default())],
        dynamic_namespaces: true,
        default_policy: NamespacePolicy::default(),
        ..CacheConfig::default()
    }
}

/// A store under test; keeps its Redis alive as long as the cache.
struct Store {
    cache: Cache,
    _redis: Option<RedisServer>,
}

async fn memory() -> Store {
    Store {
        cache: Cache::memory(config()),
        _redis: None,
    }
}

async fn two_tier() -> Store {
    let redis = RedisServer::start();
    let cache = Cache::two_tier(
        config(),
        RedisOptions {
            url: redis.url(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            key_prefix: "tc".into(),
        },
    )
    .await
    .expect("two-tier cache starts");
    Store {
        cache,
        _redis: Some(redis),
    }
}

fn put(v: &str) -> WriteArgs {
    WriteArgs {
        value: Bytes::from(v.to_string()),
        ..WriteArgs::default()
    }
}

async fn value(c: &Cache, ns: &str, key: &str) -> Option<String> {
    let ns = c.namespace(ns).unwrap();
    match c.get(&ns, key, ReadOptions::default()).await.unwrap() {
        Lookup::Hit(f) => Some(String::from_utf8(f.data.value.to_vec()).unwrap()),
        Lookup::Miss => None,
    }
}

async fn stored(c: &Cache, ns: &str, key: &str, args: WriteArgs) -> u64 {
    let n = c.namespace(ns).unwrap();
    match c.set(&n, key, args).await.unwrap() {
        SetOutcome::Stored { version } => version,
        other => panic!("expected Stored, got {other:?}"),
    }
}

async fn set_get_roundtrip(s: Store) {
    let c = &s.cache;
    assert_eq!(value(c, "default", "k").await, None);
    let v1 = stored(
        c,
        "default",
        "k",
        WriteArgs {
            tags: vec!["t1".into()],
            ..put("one")
        },
    )
    .await;
    let ns = c.namespace("default").unwrap();
    let Lookup::Hit(f) = c.get(&ns, "k", ReadOptions::default()).await.unwrap() else {
        panic!("miss after set")
    };
    assert_eq!(f.data.value, Bytes::from("one"));
    assert_eq!(f.data.version, v1);
    assert_eq!(&*f.data.tags, &["t1".to_string()]);
    assert!(!f.stale);
    assert!(
        f.fresh_remaining > Duration::from_secs(250)
            && f.fresh_remaining <= Duration::from_secs(300)
    );
    let v2 = stored(c, "default", "k", put("two")).await;
    assert!(v2 > v1, "versions increase: {v1} then {v2}");
    assert_eq!(value(c, "default", "k").await.as_deref(), Some("two"));
}

async fn conditions(s: Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    let absent = |v: &str| WriteArgs {
        condition: WriteCondition::IfAbsent,
        ..put(v)
    };
    let v1 = match c.set(&ns, "c", absent("a")).await.unwrap() {
        SetOutcome::Stored { version } => version,
        o => panic!("{o:?}"),
    };
    assert_eq!(
        c.set(&ns, "c", absent("b")).await.unwrap(),
        SetOutcome::Exists { current: v1 }
    );
    let wrong = WriteArgs {
        condition: WriteCondition::IfVersion(v1 + 1000),
        ..put("x")
    };
    assert_eq!(
        c.set(&ns, "c", wrong).await.unwrap(),
        SetOutcome::VersionMismatch { current: v1 }
    );
    let right = WriteArgs {
        condition: WriteCondition::IfVersion(v1),
        ..put("y")
    };
    let v2 = match c.set(&ns, "c", right).await.unwrap() {
        SetOutcome::Stored { version } => version,
        o => panic!("{o:?}"),
    };
    assert_eq!(value(c, "default", "c").await.as_deref(), Some("y"));
    assert_eq!(
        c.delete(&ns, "c", Some(v1)).await.unwrap(),
        DeleteOutcome::VersionMismatch { current: v2 }
    );
    assert_eq!(
        c.delete(&ns, "c", Some(v2)).await.unwrap(),
        DeleteOutcome::Deleted
    );
    assert_eq!(
        c.delete(&ns, "c", None).await.unwrap(),
        DeleteOutcome::NotFound
    );
    assert_eq!(value(c, "default", "c").await, None);
    // if_version on a missing key compares against 0.
    assert_eq!(
        c.set(
            &ns,
            "c",
            WriteArgs {
                condition: WriteCondition::IfVersion(7),
                ..put("z")
            }
        )
        .await
        .unwrap(),
        SetOutcome::VersionMismatch { current: 0 }
    );
    // A version of a deleted key is never reused.
    let v3 = stored(c, "default", "c", put("again")).await;
    assert!(v3 > v2);
}

async fn fresh_stale_gone(s: Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    stored(
        c,
        "default",
        "ttl",
        WriteArgs {
            ttl: Some(Duration::from_millis(300)),
            stale_ttl: Some(Duration::from_millis(700)),
            ..put("v")
        },
    )
    .await;
    let lookup = || async { c.get(&ns, "ttl", ReadOptions::default()).await.unwrap() };
    let Lookup::Hit(f) = lookup().await else {
        panic!("miss")
    };
    assert!(!f.stale);
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { matches!(lookup().await, Lookup::Hit(f) if f.stale) },
    )
    .await
    .expect("entry turns stale");
    let Lookup::Hit(f) = lookup().await else {
        panic!("stale entry must still be served")
    };
    assert!(f.stale && f.fresh_remaining.is_zero() && f.stale_remaining > Duration::ZERO);
    assert!(matches!(
        c.get(&ns, "ttl", ReadOptions { fresh_only: true })
            .await
            .unwrap(),
        Lookup::Miss
    ));
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { matches!(lookup().await, Lookup::Miss) },
    )
    .await
    .expect("entry expires after its stale window");
}

async fn tags_and_flush(s: Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    let tagged = |v: &str, t: &[&str]| WriteArgs {
        tags: t.iter().map(|s| s.to_string()).collect(),
        ..put(v)
    };
    stored(c, "default", "a", tagged("a", &["red"])).await;
    stored(c, "default", "b", tagged("b", &["red", "blue"])).await;
    stored(c, "default", "c", tagged("c", &["blue"])).await;
    stored(c, "default", "d", put("d")).await;
    stored(c, "other", "a", tagged("other-a", &["red"])).await;
    // Read once so L1 holds them too.
    for k in ["a", "b", "c", "d"] {
        assert!(value(c, "default", k).await.is_some());
    }
    c.invalidate_tags(&ns, &["red".to_string()]).await.unwrap();
    assert_eq!(value(c, "default", "a").await, None);
    assert_eq!(value(c, "default", "b").await, None);
    assert_eq!(value(c, "default", "c").await.as_deref(), Some("c"));
    assert_eq!(value(c, "default", "d").await.as_deref(), Some("d"));
    assert_eq!(
        value(c, "other", "a").await.as_deref(),
        Some("other-a"),
        "other namespaces untouched"
    );
    // A write after the invalidation is visible, tag and all; if_absent sees hidden entries as absent.
    let absent = WriteArgs {
        condition: WriteCondition::IfAbsent,
        ..tagged("a2", &["red"])
    };
    assert!(matches!(
        c.set(&ns, "a", absent).await.unwrap(),
        SetOutcome::Stored { .. }
    ));
    assert_eq!(value(c, "default", "a").await.as_deref(), Some("a2"));
    c.flush(&ns).await.unwrap();
    for k in ["a", "b", "c", "d"] {
        assert_eq!(value(c, "default", k).await, None, "{k} hidden by flush");
    }
    assert_eq!(value(c, "other", "a").await.as_deref(), Some("other-a"));
    stored(c, "default", "e", put("e")).await;
    assert_eq!(value(c, "default", "e").await.as_deref(), Some("e"));
}

async fn many_and_isolation(s: Store) {
    let c = &s.cache;
    stored(c, "one", "k", put("from-one")).await;
    stored(c, "two", "k", put("from-two")).await;
    stored(c, "one", "k:2", put("colon")).await;
    assert_eq!(value(c, "one", "k").await.as_deref(), Some("from-one"));
    assert_eq!(value(c, "two", "k").await.as_deref(), Some("from-two"));
    let ns = c.namespace("one").unwrap();
    let got = c
        .get_many(&ns, &["k", "missing", "k:2"], ReadOptions::default())
        .await
        .unwrap();
    let vals: Vec<Option<Bytes>> = got
        .into_iter()
        .map(|l| match l {
            Lookup::Hit(f) => Some(f.data.value),
            Lookup::Miss => None,
        })
        .collect();
    assert_eq!(
        vals,
        vec![
            Some(Bytes::from("from-one")),
            None,
            Some(Bytes::from("colon"))
        ]
    );
    // Special characters in keys stay apart.
    stored(c, "one", "a{b}", put("braces")).await;
    stored(c, "one", "a%7Bb%7D", put("escaped")).await;
    assert_eq!(value(c, "one", "a{b}").await.as_deref(), Some("braces"));
    assert_eq!(
        value(c, "one", "a%7Bb%7D").await.as_deref(),
        Some("escaped")
    );
}

async fn second_read_hits_l1(s: Store) {
    let c = &s.cache;
    stored(c, "default", "h", put("v")).await;
    let ns = c.namespace("default").unwrap();
    let Lookup::Hit(f) = c.get(&ns, "h", ReadOptions::default()).await.unwrap() else {
        panic!("miss")
    };
    assert_eq!(f.tier, Tier::L1, "write-through fills L1");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory_only {
            $( #[tokio::test] async fn $name() { super::$name(super::memory().await).await } )*
        }
        mod l1_and_redis {
            $( #[tokio::test] async fn $name() { super::$name(super::two_tier().await).await } )*
        }
    };
}

conformance!(
    set_get_roundtrip,
    conditions,
    fresh_stale_gone,
    tags_and_flush,
    many_and_isolation,
    second_read_hits_l1,
);

#[tokio::test]
async fn l2_hit_after_l1_is_bypassed() {
    let s = two_tier().await;
    let c = &s.cache;
    stored(c, "default", "x", put("v")).await;
    // A second engine on the same Redis has an empty L1: its first read comes from L2, the next
    // from its own L1.
    let other = Cache::two_tier(
        config(),
        RedisOptions {
            url: s._redis.as_ref().unwrap().url(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            key_prefix: "tc".into(),
        },
    )
    .await
    .unwrap();
    let ns = other.namespace("default").unwrap();
    let tier = |l: Lookup| match l {
        Lookup::Hit(f) => f.tier,
        Lookup::Miss => panic!("miss"),
    };
    assert_eq!(
        tier(other.get(&ns, "x", ReadOptions::default()).await.unwrap()),
        Tier::L2
    );
    assert_eq!(
        tier(other.get(&ns, "x", ReadOptions::default()).await.unwrap()),
        Tier::L1
    );
}

async fn l1_stays_within_its_byte_budget(budget_store: Store) {
    let c = &budget_store.cache;
    let ns = c.namespace("small").unwrap();
    assert_eq!(ns.policy.l1_max_bytes, 64 * 1024);
    for i in 0..2000 {
        let n = c.namespace("small").unwrap();
        c.set(&n, &format!("key-{i}"), put(&"x".repeat(100)))
            .await
            .unwrap();
    }
    let (entries, bytes) = ns.l1_usage();
    assert!(bytes <= 64 * 1024, "L1 holds {bytes} bytes, budget 65536");
    assert!(entries > 0 && entries < 2000, "{entries} entries");
    assert!(
        ns.stats
            .l1_evictions
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "size evictions are counted"
    );
}

/// A namespace with a small L1 cap, on a server whose shared L1 budget is as small (memory-only
/// mode applies only the shared budget).
fn small_budget() -> CacheConfig {
    let mut c = CacheConfig {
        l1_max_bytes: 64 * 1024,
        ..config()
    };
    c.namespaces.push((
        "small".into(),
        NamespacePolicy {
            l1_max_bytes: 64 * 1024,
            ..NamespacePolicy::default()
        },
    ));
    c
}

#[tokio::test]
async fn l1_budget_memory_only() {
    l1_stays_within_its_byte_budget(Store {
        cache: Cache::memory(small_budget()),
        _redis: None,
    })
    .await;
}

#[tokio::test]
async fn l1_budget_two_tier() {
    let redis = RedisServer::start();
    let cache = Cache::two_tier(
        small_budget(),
        RedisOptions {
            url: redis.url(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            key_prefix: "tc".into(),
        },
    )
    .await
    .unwrap();
    l1_stays_within_its_byte_budget(Store {
        cache,
        _redis: Some(redis),
    })
    .await;
}
