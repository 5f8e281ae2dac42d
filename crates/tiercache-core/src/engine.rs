//! The cache engine: [`Cache`], its shared state, and the namespace registry.
//!
//! The engine's operations live beside it, one file per seam, each an `impl Cache` that imports
//! this module (never the other way round): the read path (`read.rs`), the write path
//! (`write.rs`), the coherence bus (`bus.rs`), degraded mode (`degraded.rs`), GetOrSet and leases
//! (`lease.rs`), locks (`lock.rs`), Inspect and Watch. Which store answers is decided once, in
//! [`crate::store::Store`]; whether Redis may be used is decided once, in `degraded.rs`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use crate::error::CoreError;
use crate::l1::SharedL1;
use crate::namespace::{Namespace, NamespaceStats, SyncState};
use crate::policy::NamespacePolicy;
use crate::store::redis::RedisOptions;
use crate::store::{LocalStore, RedisStore, Store};
use crate::types::{CacheConfig, Found, Mode};

/// The default of `limits.max_namespaces`: the most namespaces one server creates on first use;
/// past it, unknown names are refused with RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_NAMESPACES: usize = 64;

/// The cache engine. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("mode", &self.mode()).finish()
    }
}

pub(crate) struct Inner {
    pub(crate) config: CacheConfig,
    pub(crate) namespaces: RwLock<HashMap<String, Arc<Namespace>>>,
    /// How many namespaces were created on first use (bounded by `config.max_namespaces`).
    pub(crate) dynamic_count: AtomicUsize,
    /// The one L1 every namespace shares, bounded by `config.l1_max_bytes`.
    pub(crate) l1: SharedL1,
    /// The authoritative tier: the local store (memory-only mode) or Redis.
    pub(crate) store: Store,
    /// True while the event subscription is live. L1 is neither read nor filled without it
    /// (two-tier mode), because invalidations could be missed.
    pub(crate) bus_up: AtomicBool,
    /// True while Redis is unreachable (degraded mode): reads serve what L1 holds, mutations are
    /// refused, until a probe gets through again. Error replies never set it.
    pub(crate) redis_down: AtomicBool,
    /// Keys a GetOrSet caller computes without a lease while degraded.
    pub(crate) compute_claims: crate::coalesce::Claims,
    /// Bumped on every (re)subscription, so a namespace sync that raced a reset is discarded.
    pub(crate) bus_generation: AtomicU64,
    pub(crate) bus_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The periodic comparison of applied sequences with Redis's (`bus.rs`).
    pub(crate) check_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The background Redis health check (`degraded.rs`).
    pub(crate) health_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The deployment's Redis names (prefix and database).
    pub(crate) key_space: crate::keys::KeySpace,
    /// Test hook: a sync read of the namespace waits here between reading Redis and taking the
    /// namespace lock, so tests can deliver an event in that window.
    #[doc(hidden)]
    pub(crate) sync_pause: parking_lot::Mutex<Option<SyncPause>>,
    /// GetOrSet waiters, by namespace and key.
    pub(crate) flights: crate::coalesce::Flights<Found>,
    /// Lock waiters, by namespace and lock name.
    pub(crate) lock_flights: crate::coalesce::Flights<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.bus_task.lock().take() {
            t.abort();
        }
        if let Some(t) = self.check_task.lock().take() {
            t.abort();
        }
        if let Some(t) = self.health_task.lock().take() {
            t.abort();
        }
    }
}

impl Cache {
    /// Creates a memory-only engine: the same API and semantics within one process.
    pub fn memory(config: CacheConfig) -> Cache {
        Self::build(config, Store::Local(LocalStore::default()))
    }

    /// Connects to Redis and starts the event subscription. Waits (within the connect timeout)
    /// for the subscription, so L1 is usable as soon as this returns.
    pub async fn two_tier(config: CacheConfig, redis: RedisOptions) -> Result<Cache, CoreError> {
        let connect_timeout = redis.connect_timeout;
        let redis = RedisStore::connect(redis).await?;
        let client = redis.client().clone();
        let cache = Self::build(config, Store::Redis(redis));
        cache.start_bus(client);
        cache.start_sequence_check();
        cache.start_health_check();
        let deadline = Instant::now() + connect_timeout;
        while !cache.inner.bus_up.load(Ordering::Acquire) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if !cache.inner.bus_up.load(Ordering::Acquire) {
            return Err(CoreError::Unavailable(
                "could not subscribe to invalidation events".into(),
            ));
        }
        Ok(cache)
    }

    fn build(config: CacheConfig, store: Store) -> Cache {
        let memory_only = store.redis().is_none();
        let key_space = store
            .redis()
            .map(|r| r.key_space().clone())
            .unwrap_or_default();
        let l1 = SharedL1::new(config.l1_max_bytes);
        let namespaces = config
            .namespaces
            .iter()
            .map(|(name, policy)| {
                (
                    name.clone(),
                    Arc::new(Namespace::new(
                        name,
                        policy.clone(),
                        false,
                        memory_only,
                        &key_space,
                        &l1,
                    )),
                )
            })
            .collect();
        Cache {
            inner: Arc::new(Inner {
                config,
                namespaces: RwLock::new(namespaces),
                dynamic_count: AtomicUsize::new(0),
                l1,
                store,
                bus_up: AtomicBool::new(false),
                redis_down: AtomicBool::new(false),
                compute_claims: Default::default(),
                bus_generation: AtomicU64::new(0),
                bus_task: parking_lot::Mutex::new(None),
                check_task: parking_lot::Mutex::new(None),
                health_task: parking_lot::Mutex::new(None),
                key_space,
                sync_pause: parking_lot::Mutex::new(None),
                flights: Default::default(),
                lock_flights: Default::default(),
            }),
        }
    }

    /// How entries are stored.
    pub fn mode(&self) -> Mode {
        if self.inner.store.redis().is_some() {
            Mode::TwoTier
        } else {
            Mode::MemoryOnly
        }
    }

    /// True while two-tier mode runs degraded: Redis unreachable, or the event subscription down.
    pub fn degraded(&self) -> bool {
        self.inner.store.redis().is_some()
            && (self.redis_down() || !self.inner.bus_up.load(Ordering::Acquire))
    }

    /// True while Redis is unreachable and the replica serves reads from L1 and refuses writes.
    pub fn redis_down(&self) -> bool {
        self.inner.redis_down.load(Ordering::Acquire)
    }

    /// Checks that Redis answers (always fine in memory-only mode).
    pub async fn ping(&self) -> Result<(), CoreError> {
        match self.inner.store.redis() {
            Some(l2) => l2.ping().await,
            None => Ok(()),
        }
    }

    /// Reads Redis's `maxmemory-policy` (two-tier mode); `None` in memory-only mode or when
    /// Redis refuses `CONFIG GET`.
    pub async fn redis_maxmemory_policy(&self) -> Option<String> {
        self.inner.store.redis()?.maxmemory_policy().await
    }

    /// Returns the namespace, creating it if dynamic namespaces are on (at most
    /// `max_namespaces` of them). Call it only for a request that is otherwise valid: use
    /// [`Cache::existing_namespace`] and [`Cache::policy_for`] before that.
    pub fn namespace(&self, name: &str) -> Result<Arc<Namespace>, CoreError> {
        if let Some(ns) = self.inner.namespaces.read().get(name) {
            return Ok(ns.clone());
        }
        if !self.inner.config.dynamic_namespaces {
            return Err(CoreError::NamespaceNotFound(name.to_string()));
        }
        let mut map = self.inner.namespaces.write();
        if let Some(ns) = map.get(name) {
            return Ok(ns.clone());
        }
        let max = self.inner.config.max_namespaces;
        if self.inner.dynamic_count.load(Ordering::Relaxed) >= max {
            return Err(CoreError::TooManyNamespaces(max));
        }
        self.inner.dynamic_count.fetch_add(1, Ordering::Relaxed);
        let ns = Arc::new(Namespace::new(
            name,
            self.inner.config.default_policy.clone(),
            true,
            self.inner.store.redis().is_none(),
            &self.inner.key_space,
            &self.inner.l1,
        ));
        map.insert(name.to_string(), ns.clone());
        Ok(ns)
    }

    /// Returns the namespace if this server has it, never creating one (NOT_FOUND otherwise).
    pub fn existing_namespace(&self, name: &str) -> Result<Arc<Namespace>, CoreError> {
        self.inner
            .namespaces
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| CoreError::NamespaceNotFound(name.to_string()))
    }

    /// The namespace if it exists, else the policy it would be created with (to validate a
    /// request before [`Cache::namespace`] creates it); NOT_FOUND when it could not be created.
    pub fn policy_for(
        &self,
        name: &str,
    ) -> Result<Result<Arc<Namespace>, NamespacePolicy>, CoreError> {
        if let Some(ns) = self.inner.namespaces.read().get(name) {
            return Ok(Ok(ns.clone()));
        }
        if !self.inner.config.dynamic_namespaces {
            return Err(CoreError::NamespaceNotFound(name.to_string()));
        }
        Ok(Err(self.inner.config.default_policy.clone()))
    }

    /// How many namespaces were created on first use, and the most allowed.
    pub fn dynamic_namespaces(&self) -> (usize, usize) {
        (
            self.inner.dynamic_count.load(Ordering::Relaxed),
            self.inner.config.max_namespaces,
        )
    }

    /// The shared L1: its budget and what it holds.
    pub fn l1(&self) -> &SharedL1 {
        &self.inner.l1
    }

    /// Returns every namespace this server knows, sorted by name.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        let mut v: Vec<_> = self.inner.namespaces.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Reports every later Redis call to `observer` (latency and errors); a no-op in
    /// memory-only mode.
    pub fn observe_redis(&self, observer: Arc<dyn crate::store::redis::RedisObserver>) {
        if let Some(l2) = self.inner.store.redis() {
            l2.set_observer(observer);
        }
    }

    /// Returns a namespace's counters.
    pub fn stats(&self, ns: &Namespace) -> Arc<NamespaceStats> {
        ns.stats.clone()
    }
}

/// A one-shot test hook for the sync read (see [`Cache::pause_sync_for_tests`]): the read says
/// it got its answer on `reached`, then waits for `resume`.
#[doc(hidden)]
pub struct SyncPause {
    pub reached: tokio::sync::mpsc::UnboundedSender<()>,
    pub resume: Arc<tokio::sync::Semaphore>,
}

impl Cache {
    /// Test hook: the next namespace sync read, after Redis answered and before it takes the
    /// namespace lock, sends on the returned receiver and waits for a permit of the returned
    /// semaphore. Lets tests deliver an event exactly in that window.
    #[doc(hidden)]
    pub fn pause_sync_for_tests(
        &self,
    ) -> (
        tokio::sync::mpsc::UnboundedReceiver<()>,
        Arc<tokio::sync::Semaphore>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let resume = Arc::new(tokio::sync::Semaphore::new(0));
        *self.inner.sync_pause.lock() = Some(SyncPause {
            reached: tx,
            resume: resume.clone(),
        });
        (rx, resume)
    }

    /// Waits at the test hook, once, when one is set.
    pub(crate) async fn sync_paused(&self) {
        let pause = self.inner.sync_pause.lock().take();
        if let Some(p) = pause {
            let _ = p.reached.send(());
            if let Ok(permit) = p.resume.acquire().await {
                permit.forget();
            }
        }
    }
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Cache>();
    f::<SyncState>();
}
