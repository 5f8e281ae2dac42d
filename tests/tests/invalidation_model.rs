//! Model-based property test of invalidation at the engine level: random sequences of Set (with
//! tags and conditions), GetOrSet leases and their Fill (tags known only at fill time), Delete,
//! InvalidateTags, FlushNamespace and Get run against
//! `tiercache_core::Cache` and against a small reference model; what is visible (value, version
//! order, condition outcomes) must always agree. Runs memory-only and L1 + a real Redis.
//!
//! The model knows nothing of sequences or marks: an invalidation simply removes the entries
//! it hides. That is the contract the engine's O(1) marks must implement.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use tiercache_core::{
    Cache, CacheConfig, DeleteOutcome, FillArgs, FillOutcome, GetOrSetOptions, GetOrSetResult,
    Lookup, NamespacePolicy, ReadOptions, RedisOptions, SetOutcome, WriteArgs, WriteCondition,
};
use tiercache_testkit::RedisServer;

const KEYS: u8 = 4;
const TAGS: u8 = 3;
const CASES: u32 = 32;
const OPS: usize = 40;

/// How a write's or delete's expected version is chosen, relative to the model's state.
#[derive(Debug, Clone, Copy)]
enum Expected {
    /// The current version (0 when absent).
    Current,
    /// A version that is not the current one.
    Wrong,
}

#[derive(Debug, Clone, Copy)]
enum Cond {
    None,
    IfAbsent,
    IfVersion(Expected),
}

#[derive(Debug, Clone)]
enum Op {
    Set {
        key: u8,
        tags: BTreeSet<u8>,
        cond: Cond,
    },
    Delete {
        key: u8,
        if_version: Option<Expected>,
    },
    Invalidate {
        tags: BTreeSet<u8>,
    },
    Flush,
    Get {
        key: u8,
    },
    /// GetOrSet without waiting: a hit, a lease, or (another lease is out) a timed-out wait.
    Lease {
        key: u8,
    },
    /// Fills the key's outstanding lease (or, if none, its last revoked one) with these tags.
    Fill {
        key: u8,
        tags: BTreeSet<u8>,
    },
}

fn expected() -> impl Strategy<Value = Expected> {
    prop_oneof![Just(Expected::Current), Just(Expected::Wrong)]
}

fn tag_set(min: usize) -> impl Strategy<Value = BTreeSet<u8>> {
    proptest::collection::btree_set(0..TAGS, min..=2)
}

fn op() -> impl Strategy<Value = Op> {
    let cond = prop_oneof![
        2 => Just(Cond::None),
        1 => Just(Cond::IfAbsent),
        1 => expected().prop_map(Cond::IfVersion),
    ];
    prop_oneof![
        4 => (0..KEYS, tag_set(0), cond).prop_map(|(key, tags, cond)| Op::Set { key, tags, cond }),
        1 => (0..KEYS, proptest::option::of(expected()))
            .prop_map(|(key, if_version)| Op::Delete { key, if_version }),
        2 => tag_set(1).prop_map(|tags| Op::Invalidate { tags }),
        1 => Just(Op::Flush),
        3 => (0..KEYS).prop_map(|key| Op::Get { key }),
        2 => (0..KEYS).prop_map(|key| Op::Lease { key }),
        2 => (0..KEYS, tag_set(0)).prop_map(|(key, tags)| Op::Fill { key, tags }),
    ]
}

/// A visible entry of the model.
#[derive(Debug, Clone)]
struct ModelEntry {
    value: String,
    version: u64,
    tags: BTreeSet<u8>,
}

/// A lease the model knows is outstanding, and what happened since it was granted.
#[derive(Debug, Clone)]
struct ModelLease {
    token: String,
    invalidated_tags: BTreeSet<u8>,
    flushed: bool,
}

#[derive(Debug, Default)]
struct Model {
    entries: BTreeMap<u8, ModelEntry>,
    /// The outstanding lease of each key.
    leases: BTreeMap<u8, ModelLease>,
    /// The last revoked lease token of each key (a Set or Delete revoked it).
    revoked: BTreeMap<u8, String>,
    /// The highest version the engine ever returned for a key: versions only grow.
    highest: BTreeMap<u8, u64>,
}

impl Model {
    /// A Set or Delete that took effect revokes the key's outstanding lease.
    fn revoke(&mut self, key: u8) {
        if let Some(l) = self.leases.remove(&key) {
            self.revoked.insert(key, l.token);
        }
    }

    fn current(&self, key: u8) -> u64 {
        self.entries.get(&key).map_or(0, |e| e.version)
    }

    fn resolve(&self, key: u8, e: Expected) -> u64 {
        match e {
            Expected::Current => self.current(key),
            Expected::Wrong => self.current(key) + 1,
        }
    }
}

fn key_name(k: u8) -> String {
    format!("k{k}")
}

fn tag_name(t: u8) -> String {
    format!("t{t}")
}

async fn visible(cache: &Cache, ns: &str, key: u8) -> Option<(String, u64)> {
    let ns = cache.namespace(ns).unwrap();
    match cache
        .get(&ns, &key_name(key), ReadOptions::default())
        .await
        .unwrap()
    {
        Lookup::Hit(f) => Some((
            String::from_utf8(f.data.value.to_vec()).unwrap(),
            f.data.version,
        )),
        Lookup::Miss => None,
    }
}

/// Runs one case in a fresh namespace; fails on the first disagreement. `replica`, a second
/// engine on the same Redis that has not seen the namespace, must agree at the end (its reads
/// go to Redis and judge visibility with marks it has to read from there).
async fn run_case(
    cache: &Cache,
    replica: Option<&Cache>,
    ns_name: &str,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let ns = cache.namespace(ns_name).unwrap();
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Set { key, tags, cond } => {
                let value = format!("v{i}");
                let condition = match cond {
                    Cond::None => WriteCondition::None,
                    Cond::IfAbsent => WriteCondition::IfAbsent,
                    Cond::IfVersion(e) => WriteCondition::IfVersion(model.resolve(*key, *e)),
                };
                let got = cache
                    .set(
                        &ns,
                        &key_name(*key),
                        WriteArgs {
                            value: Bytes::from(value.clone()),
                            tags: tags.iter().map(|&t| tag_name(t)).collect(),
                            condition,
                            ..WriteArgs::default()
                        },
                    )
                    .await
                    .unwrap();
                let current = model.current(*key);
                let present = model.entries.contains_key(key);
                match (condition, got) {
                    (WriteCondition::IfAbsent, SetOutcome::Exists { current: c }) => {
                        prop_assert!(present, "op {i}: Exists for an absent key");
                        prop_assert_eq!(c, current, "op {}: Exists names the version", i);
                    }
                    (WriteCondition::IfVersion(v), SetOutcome::VersionMismatch { current: c }) => {
                        prop_assert_ne!(v, current, "op {}: mismatch on the right version", i);
                        prop_assert_eq!(c, current, "op {}: mismatch names the version", i);
                    }
                    (condition, SetOutcome::Stored { version }) => {
                        match condition {
                            WriteCondition::IfAbsent => {
                                prop_assert!(!present, "op {i}: stored over a visible entry")
                            }
                            WriteCondition::IfVersion(v) => {
                                prop_assert_eq!(v, current, "op {}: stored at a wrong version", i)
                            }
                            WriteCondition::None => {}
                        }
                        let highest = model.highest.get(key).copied().unwrap_or(0);
                        prop_assert!(
                            version > highest,
                            "op {i}: version {version} not above {highest}"
                        );
                        model.highest.insert(*key, version);
                        model.revoke(*key);
                        model.entries.insert(
                            *key,
                            ModelEntry {
                                value,
                                version,
                                tags: tags.clone(),
                            },
                        );
                    }
                    (condition, got) => {
                        return Err(TestCaseError::fail(format!(
                            "op {i}: {condition:?} answered {got:?}"
                        )))
                    }
                }
            }
            Op::Delete { key, if_version } => {
                let if_version = if_version.map(|e| model.resolve(*key, e));
                let got = cache
                    .delete(&ns, &key_name(*key), if_version)
                    .await
                    .unwrap();
                let current = model.current(*key);
                let want = match if_version {
                    Some(v) if v != current => DeleteOutcome::VersionMismatch { current },
                    _ => {
                        model.revoke(*key);
                        if model.entries.remove(key).is_some() {
                            DeleteOutcome::Deleted
                        } else {
                            DeleteOutcome::NotFound
                        }
                    }
                };
                prop_assert_eq!(got, want, "op {}: delete", i);
            }
            Op::Invalidate { tags } => {
                let names: Vec<String> = tags.iter().map(|&t| tag_name(t)).collect();
                cache.invalidate_tags(&ns, &names).await.unwrap();
                model.entries.retain(|_, e| e.tags.is_disjoint(tags));
                for l in model.leases.values_mut() {
                    l.invalidated_tags.extend(tags.iter().copied());
                }
            }
            Op::Flush => {
                cache.flush(&ns).await.unwrap();
                model.entries.clear();
                for l in model.leases.values_mut() {
                    l.flushed = true;
                }
            }
            Op::Lease { key } => {
                let opts = GetOrSetOptions {
                    wait: Duration::ZERO,
                    allow_stale: false,
                    refresh_stale: false,
                    lease_ttl: None,
                    may_lease: true,
                };
                let got = cache.get_or_set(&ns, &key_name(*key), opts).await.unwrap();
                match (model.entries.get(key), model.leases.contains_key(key), got) {
                    (Some(e), _, GetOrSetResult::Hit { found, .. }) => {
                        prop_assert_eq!(found.data.version, e.version, "op {}: hit version", i);
                    }
                    (None, false, GetOrSetResult::Lease(lease)) => {
                        model.leases.insert(
                            *key,
                            ModelLease {
                                token: lease.token,
                                invalidated_tags: BTreeSet::new(),
                                flushed: false,
                            },
                        );
                    }
                    (None, true, GetOrSetResult::WaitTimedOut) => {}
                    (entry, leased, got) => {
                        return Err(TestCaseError::fail(format!(
                            "op {i}: entry {entry:?}, lease out {leased}: got {got:?}"
                        )))
                    }
                }
            }
            Op::Fill { key, tags } => {
                let (token, want_stored) = match (model.leases.get(key), model.revoked.get(key)) {
                    (Some(l), _) => (
                        l.token.clone(),
                        !l.flushed && l.invalidated_tags.is_disjoint(tags),
                    ),
                    (None, Some(t)) => (t.clone(), false),
                    (None, None) => continue,
                };
                let value = format!("fill{i}");
                let got = cache
                    .fill(
                        &ns,
                        &key_name(*key),
                        &token,
                        FillArgs {
                            value: Bytes::from(value.clone()),
                            tags: tags.iter().map(|&t| tag_name(t)).collect(),
                            ..FillArgs::default()
                        },
                    )
                    .await
                    .unwrap();
                let filled_current = model.leases.contains_key(key);
                match got {
                    FillOutcome::Stored { version } if want_stored => {
                        let highest = model.highest.get(key).copied().unwrap_or(0);
                        prop_assert!(
                            version > highest,
                            "op {i}: fill version not above {highest}"
                        );
                        model.highest.insert(*key, version);
                        model.entries.insert(
                            *key,
                            ModelEntry {
                                value,
                                version,
                                tags: tags.clone(),
                            },
                        );
                    }
                    // A fill whose computation began before an invalidation is dead on arrival,
                    // and a revoked lease stores nothing.
                    FillOutcome::LeaseRevoked if !want_stored => {}
                    got => {
                        return Err(TestCaseError::fail(format!(
                            "op {i}: fill (stored expected: {want_stored}) answered {got:?}"
                        )))
                    }
                }
                if filled_current {
                    // Stored or refused, the lease is gone, and with it the memory of older ones.
                    model.leases.remove(key);
                    model.revoked.remove(key);
                }
            }
            Op::Get { key } => {
                let want = model.entries.get(key).map(|e| (e.value.clone(), e.version));
                prop_assert_eq!(visible(cache, ns_name, *key).await, want, "op {}: get", i);
            }
        }
    }
    // At the end every key agrees, not only the ones the case happened to read.
    for key in 0..KEYS {
        let want = model
            .entries
            .get(&key)
            .map(|e| (e.value.clone(), e.version));
        prop_assert_eq!(
            visible(cache, ns_name, key).await,
            want.clone(),
            "final state of {}",
            key
        );
        if let Some(replica) = replica {
            prop_assert_eq!(
                visible(replica, ns_name, key).await,
                want,
                "final state of {} on the other replica",
                key
            );
        }
    }
    Ok(())
}

fn config() -> CacheConfig {
    CacheConfig {
        namespaces: vec![],
        dynamic_namespaces: true,
        default_policy: NamespacePolicy::default(),
        // Every case runs in a namespace of its own.
        max_namespaces: usize::MAX,
        ..CacheConfig::default()
    }
}

/// Runs the property against `cache`, each case (and each shrinking step) in a new namespace.
fn check(rt: &tokio::runtime::Runtime, cache: &Cache, replica: Option<&Cache>, prefix: &str) {
    let counter = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(op(), 1..=OPS), |ops| {
        let ns = format!("{prefix}{}", counter.fetch_add(1, Ordering::Relaxed));
        rt.block_on(run_case(cache, replica, &ns, &ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn invalidation_matches_the_model_memory() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let cache = Cache::memory(config());
    check(&rt, &cache, None, "model-mem-");
}

#[test]
fn invalidation_matches_the_model_redis() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let redis = RedisServer::start();
    let start = || {
        rt.block_on(Cache::two_tier(
            config(),
            RedisOptions {
                url: redis.url(),
                connect_timeout: Duration::from_secs(2),
                response_timeout: Duration::from_secs(2),
                key_prefix: "tc".into(),
                ..RedisOptions::default()
            },
        ))
        .expect("two-tier cache starts")
    };
    let (cache, replica) = (start(), start());
    check(&rt, &cache, Some(&replica), "model-redis-");
}
