//! One conformance suite for the engine, run against both stores behind it: the local store
//! (memory-only mode) and the Redis store (L1 + a real Redis), so the two cannot drift. It goes
//! through `Cache`, the only way in: the store boundary (`tiercache_core::store::Store`) is what
//! both modes share below it.
//!
//! The Redis store runs twice: on a plain Redis, and on a TLS-only Redis as an ACL user limited
//! to the key prefix (`~<prefix>:*`, `&<prefix>:*`) and the documented commands
//! (`ACL_COMMANDS`). There a `MONITOR` connection also checks that every command a Lua script
//! runs touches only the keys the call declared in `KEYS` ([`KeyAudit`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tiercache_core::{
    Cache, CacheConfig, DeleteOutcome, FillArgs, FillOutcome, GetOrSetOptions, GetOrSetResult,
    LockAcquire, Lookup, NamespacePolicy, ReadOptions, SetOutcome, Tier, Visibility, WriteArgs,
    WriteCondition,
};
use tiercache_testkit::{wait_for, AclUser, RedisSecurity, RedisServer, TlsClientAuth};

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

impl Store {
    /// A second engine on the same Redis (another replica), or `None` in memory-only mode.
    async fn peer(&self) -> Option<Cache> {
        let redis = self._redis.as_ref()?;
        Some(
            Cache::two_tier(config(), redis.options())
                .await
                .expect("a second engine starts"),
        )
    }
}

async fn memory() -> Store {
    Store {
        cache: Cache::memory(config()),
        _redis: None,
    }
}

async fn two_tier() -> Store {
    on_redis(RedisServer::start()).await
}

/// A TLS-only Redis (client certificates optional) and an ACL user limited to the prefix
/// `team-a`, the store connecting as that user.
async fn tls_acl() -> Store {
    on_redis(RedisServer::start_secure(RedisSecurity {
        tls: Some(TlsClientAuth::Optional),
        acl_user: Some(AclUser::limited_to("team-a")),
    }))
    .await
}

async fn on_redis(redis: RedisServer) -> Store {
    let cache = Cache::two_tier(config(), redis.options())
        .await
        .expect("two-tier cache starts");
    Store {
        cache,
        _redis: Some(redis),
    }
}

/// Watches a Redis with `MONITOR` (as the unrestricted `default` user) and checks that each
/// command a script runs touches only keys its `EVALSHA` declared, and channels under the
/// prefix: a script that builds a key name itself fails here even where an ACL would let it
/// through.
struct KeyAudit {
    lines: Arc<parking_lot::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeyAudit {
    async fn start(redis: &RedisServer) -> KeyAudit {
        let monitor = redis
            .client()
            .get_async_monitor()
            .await
            .expect("MONITOR as the default user");
        let lines = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let task = tokio::spawn(async move {
            let mut stream = monitor.into_on_message::<String>();
            while let Some(line) = stream.next().await {
                sink.lock().push(line);
            }
        });
        KeyAudit { lines, task }
    }

    /// Waits for the monitor to catch up, checks every script call, and returns the SHA1s of
    /// the scripts that ran.
    async fn finish(self, redis: &RedisServer, prefix: &str) -> BTreeSet<String> {
        let marker = format!("key-audit-end-{}", std::process::id());
        let mut conn = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .unwrap();
        let lines = self.lines.clone();
        wait_for(Duration::from_secs(5), Duration::from_millis(10), || {
            let seen = lines.lock().iter().any(|l| l.contains(&marker));
            async move { seen }
        })
        .await
        .expect("the monitor sees the end marker");
        self.task.abort();
        let lines = self.lines.lock().clone();
        audit(&lines, prefix)
    }
}

/// Splits a `MONITOR` line into its client (`127.0.0.1:5000`, `lua`) and its quoted arguments,
/// left escaped as Redis printed them (the same key prints the same way everywhere).
fn monitor_line(line: &str) -> Option<(String, Vec<String>)> {
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let client = line[open + 1..close].split_whitespace().nth(1)?.to_string();
    let mut args = Vec::new();
    let mut chars = line[close + 1..].chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut arg = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    arg.push(c);
                    arg.extend(chars.next());
                }
                '"' => break,
                c => arg.push(c),
            }
        }
        args.push(arg);
    }
    Some((client, args))
}

/// Checks the script calls of a `MONITOR` transcript; returns the SHA1s of the scripts run.
fn audit(lines: &[String], prefix: &str) -> BTreeSet<String> {
    let mut shas = BTreeSet::new();
    let mut declared: Option<(String, BTreeSet<String>)> = None;
    for line in lines {
        let Some((client, args)) = monitor_line(line) else {
            continue;
        };
        let command = args
            .first()
            .map(|a| a.to_ascii_lowercase())
            .unwrap_or_default();
        if client != "lua" {
            declared = None;
            if command == "evalsha" || command == "eval" {
                let n: usize = args[2].parse().expect("numkeys");
                let keys = args[3..3 + n].iter().cloned().collect();
                shas.insert(args[1].clone());
                declared = Some((args[1].clone(), keys));
            }
            continue;
        }
        let (sha, keys) = declared
            .as_ref()
            .unwrap_or_else(|| panic!("a script command without its EVALSHA: {line}"));
        match command.as_str() {
            "get" | "set" | "del" | "incr" | "pttl" | "pexpire" | "strlen" => assert!(
                keys.contains(&args[1]),
                "script {sha} touched {} without declaring it (declared {keys:?}): {line}",
                args[1]
            ),
            "publish" => assert!(
                args[1].starts_with(&format!("{prefix}:")),
                "script {sha} published outside the prefix: {line}"
            ),
            "time" => {}
            other => panic!("the audit does not know where {other} keeps its keys: {line}"),
        }
    }
    assert!(!shas.is_empty(), "no script ran: {lines:?}");
    shas
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

async fn set_get_roundtrip(s: &Store) {
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

async fn conditions(s: &Store) {
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

async fn fresh_stale_gone(s: &Store) {
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

async fn tags_and_flush(s: &Store) {
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

async fn many_and_isolation(s: &Store) {
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

async fn second_read_hits_l1(s: &Store) {
    let c = &s.cache;
    stored(c, "default", "h", put("v")).await;
    let ns = c.namespace("default").unwrap();
    let Lookup::Hit(f) = c.get(&ns, "h", ReadOptions::default()).await.unwrap() else {
        panic!("miss")
    };
    assert_eq!(f.tier, Tier::L1, "write-through fills L1");
}

async fn leases_and_fill(s: &Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    let opts = GetOrSetOptions {
        wait: Duration::from_millis(50),
        allow_stale: false,
        refresh_stale: false,
        lease_ttl: Some(Duration::from_secs(5)),
        may_lease: true,
    };
    let GetOrSetResult::Lease(lease) = c.get_or_set(&ns, "l", opts).await.unwrap() else {
        panic!("a miss grants the lease")
    };
    let fill = |v: &str, tags: &[&str]| FillArgs {
        value: Bytes::from(v.to_string()),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..FillArgs::default()
    };
    assert!(matches!(
        c.fill(&ns, "l", &lease.token, fill("computed", &["t1", "t2"]))
            .await
            .unwrap(),
        FillOutcome::Stored { .. }
    ));
    assert_eq!(value(c, "default", "l").await.as_deref(), Some("computed"));
    // A fresh tagged entry: no lease, whichever tags the call guessed.
    assert!(matches!(
        c.get_or_set(&ns, "l", opts).await.unwrap(),
        GetOrSetResult::Hit { .. }
    ));
    // A lease given back, and one revoked by a Set.
    let GetOrSetResult::Lease(lease) = c.get_or_set(&ns, "m", opts).await.unwrap() else {
        panic!("a miss grants the lease")
    };
    assert!(c.release_lease(&ns, "m", &lease.token).await.unwrap());
    assert!(!c.release_lease(&ns, "m", &lease.token).await.unwrap());
    let GetOrSetResult::Lease(lease) = c.get_or_set(&ns, "m", opts).await.unwrap() else {
        panic!("a released lease can be taken again")
    };
    stored(c, "default", "m", put("direct")).await;
    assert_eq!(
        c.fill(&ns, "m", &lease.token, fill("late", &[]))
            .await
            .unwrap(),
        FillOutcome::LeaseRevoked
    );
    assert_eq!(value(c, "default", "m").await.as_deref(), Some("direct"));
}

async fn conditions_on_tagged_entries(s: &Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    let tagged = |v: &str, t: &[&str], condition| WriteArgs {
        tags: t.iter().map(|s| s.to_string()).collect(),
        condition,
        ..put(v)
    };
    let v1 = stored(
        c,
        "default",
        "t",
        tagged("one", &["a", "b"], WriteCondition::None),
    )
    .await;
    // The stored entry's tags differ from the new value's: its visibility is still checked.
    assert_eq!(
        c.set(&ns, "t", tagged("two", &["c"], WriteCondition::IfAbsent))
            .await
            .unwrap(),
        SetOutcome::Exists { current: v1 }
    );
    let v2 = match c
        .set(
            &ns,
            "t",
            tagged("two", &["c"], WriteCondition::IfVersion(v1)),
        )
        .await
        .unwrap()
    {
        SetOutcome::Stored { version } => version,
        o => panic!("{o:?}"),
    };
    c.invalidate_tags(&ns, &["c".to_string()]).await.unwrap();
    // Hidden by its tag: absent to a condition, not found to a delete.
    assert!(matches!(
        c.set(
            &ns,
            "t",
            tagged("three", &["a"], WriteCondition::IfVersion(v2))
        )
        .await
        .unwrap(),
        SetOutcome::VersionMismatch { current: 0 }
    ));
    assert_eq!(
        c.delete(&ns, "t", None).await.unwrap(),
        DeleteOutcome::NotFound
    );
    stored(
        c,
        "default",
        "u",
        tagged("u", &["a", "{odd}%tag"], WriteCondition::None),
    )
    .await;
    assert_eq!(
        c.delete(&ns, "u", None).await.unwrap(),
        DeleteOutcome::Deleted
    );
}

async fn locks(s: &Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    let ttl = Duration::from_secs(5);
    let LockAcquire::Acquired {
        owner_token,
        fencing_token,
    } = c
        .acquire_lock(&ns, "job", ttl, Duration::ZERO)
        .await
        .unwrap()
    else {
        panic!("a free lock is acquired")
    };
    assert!(matches!(
        c.acquire_lock(&ns, "job", ttl, Duration::from_millis(50))
            .await
            .unwrap(),
        LockAcquire::Timeout
    ));
    assert!(c.renew_lock(&ns, "job", &owner_token, ttl).await.unwrap());
    assert!(!c
        .renew_lock(&ns, "job", "not-the-owner", ttl)
        .await
        .unwrap());
    assert!(c.release_lock(&ns, "job", &owner_token).await.unwrap());
    assert!(!c.release_lock(&ns, "job", &owner_token).await.unwrap());
    let LockAcquire::Acquired {
        fencing_token: next,
        ..
    } = c
        .acquire_lock(&ns, "job", ttl, Duration::ZERO)
        .await
        .unwrap()
    else {
        panic!("a released lock is acquired")
    };
    assert!(next > fencing_token, "fencing tokens increase");
}

async fn inspect(s: &Store) {
    let c = &s.cache;
    let ns = c.namespace("default").unwrap();
    let tagged = |v: &str, t: &[&str]| WriteArgs {
        tags: t.iter().map(|s| s.to_string()).collect(),
        ..put(v)
    };
    stored(c, "default", "i", tagged("v", &["x", "y"])).await;
    assert_eq!(
        c.inspect(&ns, "i").await.unwrap().visibility,
        Visibility::Fresh
    );
    c.invalidate_tags(&ns, &["y".to_string()]).await.unwrap();
    let seen = c.inspect(&ns, "i").await.unwrap();
    assert!(
        matches!(&seen.visibility, Visibility::HiddenByTag { tag, .. } if tag == "y"),
        "{seen:?}"
    );
    // This replica's L1 copy (if any) has other tags than the stored entry.
    if let Some(peer) = s.peer().await {
        let pns = peer.namespace("default").unwrap();
        stored(&peer, "default", "i", tagged("w", &["z"])).await;
        let seen = c.inspect(&ns, "i").await.unwrap();
        assert_eq!(seen.visibility, Visibility::Fresh, "{seen:?}");
        assert_eq!(
            peer.inspect(&pns, "i").await.unwrap().visibility,
            Visibility::Fresh
        );
    }
    assert_eq!(
        c.inspect(&ns, "nothing").await.unwrap().visibility,
        Visibility::Absent
    );
}

async fn events_reach_other_replicas(s: &Store) {
    let Some(peer) = s.peer().await else {
        return;
    };
    let c = &s.cache;
    stored(c, "default", "e", put("one")).await;
    assert_eq!(value(&peer, "default", "e").await.as_deref(), Some("one"));
    stored(c, "default", "e", put("two")).await;
    // The peer's L1 copy is dropped by the event, not by its expiry.
    wait_for(
        Duration::from_secs(5),
        Duration::from_millis(10),
        || async { value(&peer, "default", "e").await.as_deref() == Some("two") },
    )
    .await
    .expect("the write's event reaches the other replica");
    let GetOrSetResult::Lease(lease) = c
        .get_or_set(
            &c.namespace("default").unwrap(),
            "w",
            GetOrSetOptions {
                wait: Duration::from_millis(10),
                allow_stale: false,
                refresh_stale: false,
                lease_ttl: Some(Duration::from_secs(5)),
                may_lease: true,
            },
        )
        .await
        .unwrap()
    else {
        panic!("a miss grants the lease")
    };
    let pns = peer.namespace("default").unwrap();
    // The peer waits for the fill; the release's wake-up (lease channel) ends its wait early.
    let waiter = {
        let peer = peer.clone();
        tokio::spawn(async move {
            peer.get_or_set(
                &pns,
                "w",
                GetOrSetOptions {
                    wait: Duration::from_secs(4),
                    allow_stale: false,
                    refresh_stale: false,
                    lease_ttl: Some(Duration::from_secs(5)),
                    may_lease: true,
                },
            )
            .await
        })
    };
    wait_for(Duration::from_secs(3), Duration::from_millis(5), || async {
        peer.waiters().0 == 1
    })
    .await
    .expect("the other replica waits for the lease");
    let ns = c.namespace("default").unwrap();
    assert!(c.release_lease(&ns, "w", &lease.token).await.unwrap());
    let r = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("the release wakes the waiting replica")
        .unwrap()
        .unwrap();
    assert!(matches!(r, GetOrSetResult::Lease(_)), "{r:?}");
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod memory_only {
            $( #[tokio::test] async fn $name() { super::$name(&super::memory().await).await } )*
        }
        mod l1_and_redis {
            $( #[tokio::test] async fn $name() { super::$name(&super::two_tier().await).await } )*
        }
        mod tls_and_prefix_limited_acl_user {
            $(
                #[tokio::test]
                async fn $name() {
                    let s = super::tls_acl().await;
                    let redis = s._redis.as_ref().unwrap();
                    let audit = super::KeyAudit::start(redis).await;
                    super::$name(&s).await;
                    audit.finish(redis, "team-a").await;
                }
            )*
        }

        /// The suite as a whole runs every Lua script of the store under the limited user.
        #[tokio::test]
        async fn the_suite_runs_every_script_under_the_limited_user() {
            let mut ran = BTreeSet::new();
            $(
                let s = tls_acl().await;
                let redis = s._redis.as_ref().unwrap();
                let audit = KeyAudit::start(redis).await;
                $name(&s).await;
                ran.extend(audit.finish(redis, "team-a").await);
            )*
            let all: BTreeSet<String> = tiercache_core::store::redis::script_hashes()
                .into_iter()
                .map(|(_, sha)| sha)
                .collect();
            let missing: Vec<_> = tiercache_core::store::redis::script_hashes()
                .into_iter()
                .filter(|(_, sha)| !ran.contains(sha))
                .map(|(name, _)| name)
                .collect();
            assert!(missing.is_empty(), "scripts the suite never ran: {missing:?}");
            assert!(ran.is_subset(&all), "unknown scripts ran: {ran:?}");
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
    leases_and_fill,
    conditions_on_tagged_entries,
    locks,
    inspect,
    events_reach_other_replicas,
);

#[tokio::test]
async fn l2_hit_after_l1_is_bypassed() {
    let s = two_tier().await;
    let c = &s.cache;
    stored(c, "default", "x", put("v")).await;
    // A second engine on the same Redis has an empty L1: its first read comes from L2, the next
    // from its own L1.
    let other = s.peer().await.unwrap();
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
    let cache = Cache::two_tier(small_budget(), redis.options())
        .await
        .unwrap();
    l1_stays_within_its_byte_budget(Store {
        cache,
        _redis: Some(redis),
    })
    .await;
}
