//! The cache engine: namespaces, the read and write paths over L1 and L2, and the event bus that
//! keeps every replica's L1 coherent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use parking_lot::RwLock;
use rand::Rng;
use tokio::time::Instant;

use crate::codec::{self, EntryData};
use crate::error::CoreError;
use crate::event::{Event, EventKind};
use crate::l2::{Condition, L2DeleteResult, L2SetResult, RedisOptions, L2};
use crate::namespace::{bump, L1Entry, Namespace, NamespaceStats, SyncState};
use crate::policy::NamespacePolicy;

/// How often a degraded replica checks whether Redis answers again.
pub const REDIS_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// The most namespaces one server creates dynamically; past it, unknown names are refused.
pub const MAX_NAMESPACES: usize = 10_000;
/// The patterns every replica subscribes to: all namespaces' event, lease and lock channels.
const PATTERNS: [&str; 3] = ["tc:{*}:events", "tc:{*}:leases", "tc:{*}:locks"];

/// The engine's configuration.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Namespaces that exist from the start, with their policies.
    pub namespaces: Vec<(String, NamespacePolicy)>,
    /// Whether unknown namespaces are created on first use with `default_policy`.
    pub dynamic_namespaces: bool,
    pub default_policy: NamespacePolicy,
}

/// The tier that answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    L1,
    L2,
}

/// A visible entry and its remaining lifetime.
#[derive(Debug, Clone)]
pub struct Found {
    pub data: EntryData,
    pub fresh_remaining: Duration,
    pub stale_remaining: Duration,
    pub stale: bool,
    pub tier: Tier,
}

/// The result of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    Hit(Found),
    Miss,
}

/// Options of a read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Treat a stale entry as a miss.
    pub fresh_only: bool,
}

/// A write of one entry.
#[derive(Debug, Clone, Default)]
pub struct WriteArgs {
    pub value: Bytes,
    /// Fresh period; the namespace default when `None`. Capped by the namespace max TTL.
    pub ttl: Option<Duration>,
    /// Stale window; the namespace default when `None`.
    pub stale_ttl: Option<Duration>,
    pub tags: Vec<String>,
    pub condition: WriteCondition,
}

/// The condition of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteCondition {
    #[default]
    None,
    IfAbsent,
    IfVersion(u64),
}

/// What a Set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Stored { version: u64 },
    VersionMismatch { current: u64 },
    Exists { current: u64 },
}

/// What a Delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    VersionMismatch { current: u64 },
}

/// How the engine stores entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    MemoryOnly,
    TwoTier,
}

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
    pub(crate) l2: Option<L2>,
    /// True while the event subscription is live. L1 is neither read nor filled without it
    /// (two-tier mode), because invalidations could be missed.
    pub(crate) bus_up: AtomicBool,
    /// True while Redis is unreachable (degraded mode): reads serve what L1 holds, mutations are
    /// refused, until a probe gets through again. Error replies never set it.
    pub(crate) redis_down: AtomicBool,
    /// Keys a GetOrSet caller computes without a lease while degraded.
    pub(crate) compute_claims: crate::degraded::ComputeClaims,
    /// Bumped on every (re)subscription, so a namespace sync that raced a reset is discarded.
    bus_generation: AtomicU64,
    /// Memory-only mode's version clock: microseconds, strictly increasing.
    version_clock: AtomicU64,
    bus_task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// GetOrSet waiters, by namespace and key.
    pub(crate) flights: crate::coalesce::Flights,
    /// Lock waiters, by namespace and lock name.
    pub(crate) lock_flights: crate::coalesce::Flights,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(t) = self.bus_task.lock().take() {
            t.abort();
        }
    }
}

impl Cache {
    /// Creates a memory-only engine: the same API and semantics within one process.
    pub fn memory(config: CacheConfig) -> Cache {
        Self::build(config, None)
    }

    /// Connects to Redis and starts the event subscription. Waits (within the connect timeout)
    /// for the subscription, so L1 is usable as soon as this returns.
    pub async fn two_tier(config: CacheConfig, redis: RedisOptions) -> Result<Cache, CoreError> {
        let connect_timeout = redis.connect_timeout;
        let l2 = L2::connect(redis).await?;
        let client = l2.client().clone();
        let cache = Self::build(config, Some(l2));
        let task = tokio::spawn(bus_loop(Arc::downgrade(&cache.inner), client));
        *cache.inner.bus_task.lock() = Some(task);
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

    fn build(config: CacheConfig, l2: Option<L2>) -> Cache {
        let memory_only = l2.is_none();
        let namespaces = config
            .namespaces
            .iter()
            .map(|(name, policy)| {
                (
                    name.clone(),
                    Arc::new(Namespace::new(name, policy.clone(), false, memory_only)),
                )
            })
            .collect();
        Cache {
            inner: Arc::new(Inner {
                config,
                namespaces: RwLock::new(namespaces),
                l2,
                bus_up: AtomicBool::new(false),
                redis_down: AtomicBool::new(false),
                compute_claims: Default::default(),
                bus_generation: AtomicU64::new(0),
                version_clock: AtomicU64::new(0),
                bus_task: parking_lot::Mutex::new(None),
                flights: Default::default(),
                lock_flights: Default::default(),
            }),
        }
    }

    /// How entries are stored.
    pub fn mode(&self) -> Mode {
        if self.inner.l2.is_some() {
            Mode::TwoTier
        } else {
            Mode::MemoryOnly
        }
    }

    /// True while two-tier mode runs degraded: Redis unreachable, or the event subscription down.
    pub fn degraded(&self) -> bool {
        self.inner.l2.is_some() && (self.redis_down() || !self.inner.bus_up.load(Ordering::Acquire))
    }

    /// True while Redis is unreachable and the replica serves reads from L1 and refuses writes.
    pub fn redis_down(&self) -> bool {
        self.inner.redis_down.load(Ordering::Acquire)
    }

    /// The Redis tier when it is configured and reachable.
    pub(crate) fn healthy_l2(&self) -> Option<&L2> {
        self.inner.l2.as_ref().filter(|_| !self.redis_down())
    }

    /// Errors when Redis is configured but unreachable: for operations with no local fallback.
    pub(crate) fn require_redis_if_configured(&self) -> Result<Option<&L2>, CoreError> {
        match (&self.inner.l2, self.healthy_l2()) {
            (Some(_), None) => Err(unreachable()),
            (_, l2) => Ok(l2),
        }
    }

    /// The Redis tier for a mutation of `keys`: `None` in memory-only mode. While Redis is
    /// unreachable the mutation is refused and this replica drops its L1 copy of `keys`, so it
    /// never serves what a caller just tried to change or remove.
    pub(crate) fn writable_l2(
        &self,
        ns: &Namespace,
        keys: &[&str],
    ) -> Result<Option<&L2>, CoreError> {
        match &self.inner.l2 {
            None => Ok(None),
            Some(_) if self.redis_down() => {
                self.forget(ns, keys);
                Err(unreachable())
            }
            Some(l2) => Ok(Some(l2)),
        }
    }

    /// Passes the Redis result of a mutation of `key` on. A failed mutation may or may not have
    /// reached Redis, so this replica drops its L1 copy; an unreachable Redis trips degraded mode.
    pub(crate) fn written<T>(
        &self,
        ns: &Namespace,
        key: &str,
        r: Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        if let Err(e) = &r {
            self.forget(ns, &[key]);
            self.trip(e);
        }
        r
    }

    /// Drops this replica's L1 copy of `keys`. The epoch bump keeps a Redis read that is under
    /// way from putting an older copy back.
    fn forget(&self, ns: &Namespace, keys: &[&str]) {
        let Some(l1) = &ns.l1 else { return };
        let mut s = ns.sync.write();
        s.epoch += 1;
        for k in keys {
            l1.invalidate(*k);
        }
    }

    /// Enters degraded mode after Redis was found unreachable (other errors are ignored) and
    /// starts the probe that leaves it.
    pub(crate) fn trip(&self, e: &CoreError) {
        if !e.is_unreachable() || self.inner.l2.is_none() {
            return;
        }
        if self.inner.redis_down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(error = %e, "redis unreachable, entering degraded mode");
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REDIS_PROBE_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let cache = Cache { inner };
                let Some(l2) = &cache.inner.l2 else { return };
                if l2.ping().await.is_ok() {
                    // L1 is not cleared: nothing was written to it while degraded, and if the
                    // subscription dropped (events may have been missed) the bus loop clears it
                    // when it resubscribes; a sequence gap clears a namespace on its own.
                    cache.inner.redis_down.store(false, Ordering::Release);
                    cache.inner.compute_claims.clear();
                    cache.inner.flights.wake_all();
                    cache.inner.lock_flights.wake_all();
                    tracing::info!("redis reachable again, leaving degraded mode");
                    return;
                }
            }
        });
    }

    /// Checks that Redis answers (always fine in memory-only mode).
    pub async fn ping(&self) -> Result<(), CoreError> {
        match &self.inner.l2 {
            Some(l2) => l2.ping().await,
            None => Ok(()),
        }
    }

    /// Returns the namespace, creating it if dynamic namespaces are on.
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
        if map.len() >= MAX_NAMESPACES {
            return Err(CoreError::TooManyNamespaces(MAX_NAMESPACES));
        }
        let ns = Arc::new(Namespace::new(
            name,
            self.inner.config.default_policy.clone(),
            true,
            self.inner.l2.is_none(),
        ));
        map.insert(name.to_string(), ns.clone());
        Ok(ns)
    }

    /// Returns every namespace this server knows, sorted by name.
    pub fn namespaces(&self) -> Vec<Arc<Namespace>> {
        let mut v: Vec<_> = self.inner.namespaces.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Returns a namespace's counters.
    pub fn stats(&self, ns: &Namespace) -> Arc<NamespaceStats> {
        ns.stats.clone()
    }

    // ---- reads ----

    /// Reads one key: L1, then L2.
    pub async fn get(
        &self,
        ns: &Namespace,
        key: &str,
        opts: ReadOptions,
    ) -> Result<Lookup, CoreError> {
        Ok(self
            .get_many(ns, &[key], opts)
            .await?
            .pop()
            .unwrap_or(Lookup::Miss))
    }

    /// Reads keys, in order: L1 for each, then one L2 round trip for the rest.
    pub async fn get_many(
        &self,
        ns: &Namespace,
        keys: &[&str],
        opts: ReadOptions,
    ) -> Result<Vec<Lookup>, CoreError> {
        self.lookup_many(ns, keys, opts, true).await
    }

    /// Reads keys; `count` says whether the lookups count in the namespace statistics (waiters'
    /// re-checks do not).
    pub(crate) async fn lookup_many(
        &self,
        ns: &Namespace,
        keys: &[&str],
        opts: ReadOptions,
        count: bool,
    ) -> Result<Vec<Lookup>, CoreError> {
        let now = Instant::now();
        let degraded = self.redis_down();
        let mut out: Vec<Option<Lookup>> = keys
            .iter()
            .map(|k| self.l1_lookup(ns, k, now, degraded).map(Lookup::Hit))
            .collect();
        if let Some(l2) = self.healthy_l2() {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                match self.read_l2(ns, l2, keys, &missing, &mut out).await {
                    Ok(()) => {}
                    Err(e @ CoreError::Unavailable(_)) => {
                        // Reads keep serving from L1 (fresh, then stale) while Redis is down.
                        self.trip(&e);
                        let now = Instant::now();
                        for &i in &missing {
                            out[i] = self.l1_lookup(ns, keys[i], now, true).map(Lookup::Hit);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|l| {
                let l = l.unwrap_or(Lookup::Miss);
                if count {
                    count_lookup(ns, &l);
                }
                match l {
                    Lookup::Hit(f) if opts.fresh_only && f.stale => Lookup::Miss,
                    l => l,
                }
            })
            .collect())
    }

    /// Reads the L2 entries of `keys[missing]` into `out`, filling L1 where it is safe.
    async fn read_l2(
        &self,
        ns: &Namespace,
        l2: &L2,
        keys: &[&str],
        missing: &[usize],
        out: &mut [Option<Lookup>],
    ) -> Result<(), CoreError> {
        let epoch = self.ensure_synced(ns).await?;
        let miss_keys: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let read = l2.read(&ns.keys, &miss_keys).await?;
        let now = Instant::now();
        for (&i, entry) in missing.iter().zip(read) {
            let Some(entry) = entry else { continue };
            if !self.check_visible(ns, &entry.data, epoch.is_some()).await? {
                continue;
            }
            let fresh = entry.remaining.saturating_sub(entry.data.stale_window);
            let l1e = L1Entry {
                fresh_until: now + fresh,
                stale_until: now + entry.remaining,
                l1_until: now + ns.policy.l1_max_ttl.min(entry.remaining),
                data: entry.data,
            };
            let found = found(&l1e, now, Tier::L2);
            if let Some(epoch) = epoch {
                self.l1_fill(ns, keys[i], l1e, epoch);
            }
            out[i] = Some(Lookup::Hit(found));
        }
        Ok(())
    }

    /// Looks a key up in L1. In two-tier mode L1 is trusted only while the replica follows the
    /// event stream, except when `degraded`: then whatever L1 still holds is served.
    #[tracing::instrument(name = "l1.lookup", level = "debug", skip_all)]
    fn l1_lookup(&self, ns: &Namespace, key: &str, now: Instant, degraded: bool) -> Option<Found> {
        let l1 = ns.l1.as_ref()?;
        let two_tier = self.inner.l2.is_some();
        if two_tier && !degraded && !self.inner.bus_up.load(Ordering::Acquire) {
            return None;
        }
        let e = l1.get(key)?;
        if now >= e.stale_until || now >= e.l1_until {
            l1.invalidate(key);
            return None;
        }
        let visible = {
            let sync = ns.sync.read();
            if degraded {
                Some(sync.visible(&e.data).unwrap_or(true))
            } else {
                // Not synced since the last reset: the marks cannot be trusted.
                sync.last_seq?;
                sync.visible(&e.data)
            }
        };
        match visible {
            Some(true) => Some(found(&e, now, Tier::L1)),
            Some(false) => {
                l1.invalidate(key);
                None
            }
            None => None,
        }
    }

    /// Makes sure the replica knows the namespace's sequence and flush mark. Returns the epoch
    /// an L1 fill must still see, or `None` when L1 must not be filled (subscription down).
    pub(crate) async fn ensure_synced(&self, ns: &Namespace) -> Result<Option<u64>, CoreError> {
        let Some(l2) = &self.inner.l2 else {
            return Ok(Some(ns.sync.read().epoch));
        };
        if !self.inner.bus_up.load(Ordering::Acquire) {
            return Ok(None);
        }
        {
            let s = ns.sync.read();
            if s.last_seq.is_some() {
                return Ok(Some(s.epoch));
            }
        }
        let generation = self.inner.bus_generation.load(Ordering::Acquire);
        let (seq, flush) = l2.namespace_marks(&ns.keys).await?;
        let mut s = ns.sync.write();
        if s.last_seq.is_none() {
            if generation != self.inner.bus_generation.load(Ordering::Acquire)
                || !self.inner.bus_up.load(Ordering::Acquire)
            {
                return Ok(None);
            }
            s.last_seq = Some(seq);
            s.flush_mark = s.flush_mark.max(flush);
            s.epoch += 1;
        }
        Ok(Some(s.epoch))
    }

    /// Decides visibility of an entry read from L2, asking Redis for marks this replica does
    /// not know.
    pub(crate) async fn check_visible(
        &self,
        ns: &Namespace,
        data: &EntryData,
        synced: bool,
    ) -> Result<bool, CoreError> {
        if synced {
            if let Some(v) = ns.sync.read().visible(data) {
                return Ok(v);
            }
        }
        let Some(l2) = &self.inner.l2 else {
            return Ok(ns.sync.read().visible(data).unwrap_or(true));
        };
        let tags: Vec<&str> = data.tags.iter().map(String::as_str).collect();
        let ((_, flush), marks) =
            futures::try_join!(l2.namespace_marks(&ns.keys), l2.tag_marks(&ns.keys, &tags))?;
        if synced {
            let mut s = ns.sync.write();
            for (t, m) in tags.iter().zip(&marks) {
                s.learn_tag(t, *m);
            }
        }
        Ok(data.born >= flush && marks.iter().all(|&m| data.born >= m))
    }

    fn l1_fill(&self, ns: &Namespace, key: &str, e: L1Entry, epoch: u64) {
        let Some(l1) = &ns.l1 else { return };
        let s = ns.sync.write();
        if s.epoch == epoch && s.last_seq.is_some() {
            l1.insert(key.into(), Arc::new(e));
        }
    }

    // ---- writes ----

    /// Writes one entry through L2 (when configured) and L1.
    pub async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        args: WriteArgs,
    ) -> Result<SetOutcome, CoreError> {
        let (ttl, stale) = lifetimes(&ns.policy, args.ttl, args.stale_ttl);
        let mut data = EntryData {
            value: args.value,
            version: 0,
            born: 0,
            tags: args.tags.into(),
            absent: false,
            stale_window: stale,
        };
        let outcome = match self.writable_l2(ns, &[key])? {
            None => self.memory_set(ns, key, &mut data, ttl, args.condition)?,
            Some(l2) => {
                let r = self
                    .l2_set(ns, l2, key, &mut data, ttl, args.condition)
                    .await;
                self.written(ns, key, r)?
            }
        };
        if matches!(outcome, SetOutcome::Stored { .. }) {
            bump(&ns.stats.sets);
            self.inner.flights.wake(&ns.name, key);
        }
        Ok(outcome)
    }

    async fn l2_set(
        &self,
        ns: &Namespace,
        l2: &L2,
        key: &str,
        data: &mut EntryData,
        ttl: Duration,
        condition: WriteCondition,
    ) -> Result<SetOutcome, CoreError> {
        let cond = match condition {
            WriteCondition::None => Condition::None,
            WriteCondition::IfAbsent => Condition::IfAbsent,
            WriteCondition::IfVersion(v) => Condition::IfVersion(v),
        };
        // Sync first so the write can go through to L1 on a namespace's first write.
        self.ensure_synced(ns).await?;
        let blob = codec::encode(data);
        let lifetime = ttl + data.stale_window;
        Ok(match l2.set(&ns.keys, key, blob, lifetime, cond).await? {
            L2SetResult::Stored { version, sequence } => {
                data.version = version;
                data.born = sequence;
                self.l1_after_write(ns, key, Some((data.clone(), ttl)), sequence);
                SetOutcome::Stored { version }
            }
            L2SetResult::VersionMismatch { current } => SetOutcome::VersionMismatch { current },
            L2SetResult::Exists { current } => SetOutcome::Exists { current },
        })
    }

    /// The L1 of a namespace as the store of memory-only mode (where it is always on).
    pub(crate) fn local_store<'a>(
        &self,
        ns: &'a Namespace,
    ) -> Result<&'a crate::namespace::L1, CoreError> {
        ns.l1
            .as_ref()
            .ok_or_else(|| CoreError::Unavailable(format!("no store for namespace {}", ns.name)))
    }

    /// Takes the next sequence of memory-only mode, where the namespace state is the truth.
    pub(crate) fn local_sequence(&self, s: &mut SyncState) -> Option<u64> {
        s.epoch += 1;
        let seq = s.last_seq.unwrap_or(0) + 1;
        s.last_seq = Some(seq);
        Some(seq)
    }

    fn memory_set(
        &self,
        ns: &Namespace,
        key: &str,
        data: &mut EntryData,
        ttl: Duration,
        condition: WriteCondition,
    ) -> Result<SetOutcome, CoreError> {
        let l1 = self.local_store(ns)?;
        let _stripe = ns.stripe(key).lock();
        let now = Instant::now();
        let current = self.memory_current(ns, key, now);
        match (condition, current) {
            (WriteCondition::IfAbsent, Some(current)) => return Ok(SetOutcome::Exists { current }),
            (WriteCondition::IfVersion(v), current) if current.unwrap_or(0) != v => {
                return Ok(SetOutcome::VersionMismatch {
                    current: current.unwrap_or(0),
                })
            }
            _ => {}
        }
        ns.revoke_local_lease(key);
        data.version = self.next_version();
        let mut s = ns.sync.write();
        let seq = self.local_sequence(&mut s);
        data.born = seq.unwrap_or_else(|| s.last_seq.unwrap_or(0));
        let stale = data.stale_window;
        let entry = L1Entry {
            data: data.clone(),
            fresh_until: now + ttl,
            stale_until: now + ttl + stale,
            l1_until: now + ttl + stale,
        };
        l1.insert(key.into(), Arc::new(entry));
        if let Some(sequence) = seq {
            let _ = ns.events.send(Event {
                sequence,
                kind: EventKind::KeyChanged {
                    key: key.to_string(),
                    version: data.version,
                },
            });
        }
        Ok(SetOutcome::Stored {
            version: data.version,
        })
    }

    /// The version of the visible entry of `key` in memory-only mode.
    pub(crate) fn memory_current(&self, ns: &Namespace, key: &str, now: Instant) -> Option<u64> {
        let e = ns.l1.as_ref()?.get(key)?;
        if now >= e.stale_until {
            return None;
        }
        ns.sync
            .read()
            .visible(&e.data)
            .unwrap_or(true)
            .then_some(e.data.version)
    }

    pub(crate) fn next_version(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = self.inner.version_clock.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.inner.version_clock.compare_exchange_weak(
                prev,
                next,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }

    /// Updates L1 after an L2 write that took `sequence`: holds the new entry only if no later
    /// event has been applied yet (later events will then be applied on top of it).
    pub(crate) fn l1_after_write(
        &self,
        ns: &Namespace,
        key: &str,
        written: Option<(EntryData, Duration)>,
        sequence: u64,
    ) {
        let Some(l1) = &ns.l1 else { return };
        let mut s = ns.sync.write();
        s.epoch += 1;
        let bus_up = self.inner.bus_up.load(Ordering::Acquire);
        match (written, s.last_seq) {
            // `last == sequence`: our own event was applied first, which changed nothing else.
            (Some((data, ttl)), Some(last)) if bus_up && last <= sequence => {
                let now = Instant::now();
                let lifetime = ttl + data.stale_window;
                let entry = L1Entry {
                    fresh_until: now + ttl,
                    stale_until: now + lifetime,
                    l1_until: now + ns.policy.l1_max_ttl.min(lifetime),
                    data,
                };
                l1.insert(key.into(), Arc::new(entry));
            }
            _ => l1.invalidate(key),
        }
    }

    /// Deletes one key (optionally only at a version) and revokes its lease.
    pub async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<DeleteOutcome, CoreError> {
        let outcome = match self.writable_l2(ns, &[key])? {
            None => self.memory_delete(ns, key, if_version)?,
            Some(l2) => match self.written(ns, key, l2.delete(&ns.keys, key, if_version).await)? {
                L2DeleteResult::Deleted { sequence } => {
                    self.l1_after_write(ns, key, None, sequence);
                    DeleteOutcome::Deleted
                }
                L2DeleteResult::NotFound { sequence } => {
                    self.l1_after_write(ns, key, None, sequence);
                    DeleteOutcome::NotFound
                }
                L2DeleteResult::VersionMismatch { current } => {
                    DeleteOutcome::VersionMismatch { current }
                }
            },
        };
        if outcome == DeleteOutcome::Deleted {
            bump(&ns.stats.deletes);
        }
        if !matches!(outcome, DeleteOutcome::VersionMismatch { .. }) {
            self.inner.flights.wake(&ns.name, key);
        }
        Ok(outcome)
    }

    fn memory_delete(
        &self,
        ns: &Namespace,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<DeleteOutcome, CoreError> {
        let l1 = self.local_store(ns)?;
        let _stripe = ns.stripe(key).lock();
        let current = self.memory_current(ns, key, Instant::now());
        if let Some(v) = if_version {
            if current.unwrap_or(0) != v {
                return Ok(DeleteOutcome::VersionMismatch {
                    current: current.unwrap_or(0),
                });
            }
        }
        ns.revoke_local_lease(key);
        let mut s = ns.sync.write();
        let seq = self.local_sequence(&mut s);
        l1.invalidate(key);
        if let Some(sequence) = seq {
            let _ = ns.events.send(Event {
                sequence,
                kind: EventKind::KeyChanged {
                    key: key.to_string(),
                    version: 0,
                },
            });
        }
        Ok(if current.is_some() {
            DeleteOutcome::Deleted
        } else {
            DeleteOutcome::NotFound
        })
    }

    /// Hides every entry carrying any of `tags`; returns the sequence taken.
    pub async fn invalidate_tags(&self, ns: &Namespace, tags: &[String]) -> Result<u64, CoreError> {
        // An invalidation must reach every replica: no local fallback while Redis is down.
        let seq = match self.require_redis_if_configured()? {
            Some(l2) => {
                let seq = l2
                    .invalidate_tags(&ns.keys, tags, ns.policy.max_lifetime())
                    .await
                    .inspect_err(|e| self.trip(e))?;
                let mut s = ns.sync.write();
                for t in tags {
                    s.learn_tag(t, seq);
                }
                s.epoch += 1;
                seq
            }
            None => {
                let mut s = ns.sync.write();
                let seq = s.last_seq.unwrap_or(0) + 1;
                s.last_seq = Some(seq);
                for t in tags {
                    s.learn_tag(t, seq);
                }
                s.epoch += 1;
                let _ = ns.events.send(Event {
                    sequence: seq,
                    kind: EventKind::TagsInvalidated {
                        tags: tags.to_vec(),
                    },
                });
                seq
            }
        };
        bump(&ns.stats.invalidations);
        Ok(seq)
    }

    /// Hides every entry of the namespace; returns the sequence taken.
    pub async fn flush(&self, ns: &Namespace) -> Result<u64, CoreError> {
        let seq = match self.require_redis_if_configured()? {
            Some(l2) => {
                let seq = l2.flush(&ns.keys).await.inspect_err(|e| self.trip(e))?;
                let mut s = ns.sync.write();
                s.flush_mark = s.flush_mark.max(seq);
                s.epoch += 1;
                seq
            }
            None => {
                let mut s = ns.sync.write();
                let seq = s.last_seq.unwrap_or(0) + 1;
                s.last_seq = Some(seq);
                s.flush_mark = seq;
                s.epoch += 1;
                let _ = ns.events.send(Event {
                    sequence: seq,
                    kind: EventKind::Flushed,
                });
                seq
            }
        };
        if let Some(l1) = &ns.l1 {
            l1.invalidate_all();
        }
        bump(&ns.stats.invalidations);
        Ok(seq)
    }

    // ---- the event bus ----

    /// Forgets every namespace's sequence (L1 is then bypassed until resynced) and tells Watch
    /// streams about the gap.
    fn mark_unsynced_all(&self) {
        for ns in self.namespaces() {
            let mut s = ns.sync.write();
            s.epoch += 1;
            if let Some(last) = s.last_seq.take() {
                let _ = ns.events.send(Event {
                    sequence: last,
                    kind: EventKind::Gap {
                        last_sequence: last,
                    },
                });
            }
        }
    }

    pub(crate) fn reset_all(&self) {
        for ns in self.namespaces() {
            let mut s = ns.sync.write();
            let last = s.last_seq.take();
            ns.clear_locked(&mut s);
            if let Some(last) = last {
                let _ = ns.events.send(Event {
                    sequence: last,
                    kind: EventKind::Gap {
                        last_sequence: last,
                    },
                });
            }
        }
    }

    fn apply_message(&self, channel: &str, payload: &[u8]) {
        let Some(rest) = channel.strip_prefix("tc:{") else {
            return;
        };
        if let Some(name) = rest.strip_suffix("}:leases") {
            if let Ok(key) = std::str::from_utf8(payload) {
                self.inner.flights.wake(name, key);
            }
            return;
        }
        if let Some(name) = rest.strip_suffix("}:locks") {
            if let Ok(lock) = std::str::from_utf8(payload) {
                self.inner.lock_flights.wake(name, lock);
            }
            return;
        }
        let Some(name) = rest.strip_suffix("}:events") else {
            return;
        };
        let Some(ns) = self.inner.namespaces.read().get(name).cloned() else {
            return;
        };
        let Some(event) = std::str::from_utf8(payload).ok().and_then(Event::decode) else {
            tracing::warn!(namespace = name, "undecodable invalidation event");
            return;
        };
        if let EventKind::KeyChanged { key, .. } = &event.kind {
            self.inner.flights.wake(name, key);
        }
        apply_event(&ns, event);
    }
}

/// Applies one event from the bus to a namespace (two-tier mode).
fn apply_event(ns: &Namespace, event: Event) {
    let mut s = ns.sync.write();
    let Some(last) = s.last_seq else { return };
    if event.sequence <= last {
        return;
    }
    if event.sequence > last + 1 {
        tracing::warn!(
            namespace = %ns.name,
            last,
            got = event.sequence,
            "invalidation event gap, clearing L1"
        );
        s.last_seq = None;
        ns.clear_locked(&mut s);
        let _ = ns.events.send(Event {
            sequence: event.sequence,
            kind: EventKind::Gap {
                last_sequence: last,
            },
        });
        return;
    }
    s.last_seq = Some(event.sequence);
    s.epoch += 1;
    match &event.kind {
        EventKind::KeyChanged { key, version } => {
            if let Some(l1) = &ns.l1 {
                let stale = l1
                    .get(key.as_str())
                    .is_some_and(|e| *version == 0 || e.data.version != *version);
                if stale {
                    l1.invalidate(key.as_str());
                }
            }
        }
        EventKind::TagsInvalidated { tags } => {
            for t in tags {
                s.learn_tag(t, event.sequence);
            }
        }
        EventKind::Flushed => {
            s.flush_mark = s.flush_mark.max(event.sequence);
            if let Some(l1) = &ns.l1 {
                l1.invalidate_all();
            }
        }
        EventKind::Gap { .. } => {}
    }
    let _ = ns.events.send(event);
}

async fn bus_loop(inner: Weak<Inner>, client: redis::Client) {
    let mut backoff = Duration::from_millis(20);
    loop {
        let timeout = match inner.upgrade() {
            Some(i) => i.l2.as_ref().map(|l2| l2.options().connect_timeout),
            None => return,
        }
        .unwrap_or(Duration::from_secs(2));
        let subscribed = async {
            let mut ps = client.get_async_pubsub().await?;
            ps.psubscribe(&PATTERNS[..]).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(timeout, subscribed).await {
            Ok(Ok(ps)) => {
                backoff = Duration::from_millis(20);
                {
                    let Some(i) = inner.upgrade() else { return };
                    let cache = Cache { inner: i };
                    cache.inner.bus_generation.fetch_add(1, Ordering::AcqRel);
                    cache.reset_all();
                    cache.inner.bus_up.store(true, Ordering::Release);
                    // Wake-ups may have been lost while unsubscribed.
                    cache.inner.flights.wake_all();
                    cache.inner.lock_flights.wake_all();
                    tracing::info!("subscribed to invalidation events");
                }
                let mut stream = ps.into_on_message();
                while let Some(msg) = stream.next().await {
                    let Some(i) = inner.upgrade() else { return };
                    Cache { inner: i }
                        .apply_message(msg.get_channel_name(), msg.get_payload_bytes());
                }
                let Some(i) = inner.upgrade() else { return };
                let cache = Cache { inner: i };
                cache.inner.bus_up.store(false, Ordering::Release);
                // L1 is bypassed from now on, and cleared when the subscription is back, before it
                // is trusted again. It is not cleared here: if Redis itself is down, L1 is what a
                // degraded replica serves (no other replica can write meanwhile either).
                cache.mark_unsynced_all();
                tracing::warn!("invalidation event subscription dropped, L1 bypassed");
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot subscribe to invalidation events"),
            Err(_) => tracing::warn!("timed out subscribing to invalidation events"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// The error of a mutation refused because Redis is unreachable.
pub(crate) fn unreachable() -> CoreError {
    CoreError::Unavailable("redis is unreachable".into())
}

fn found(e: &L1Entry, now: Instant, tier: Tier) -> Found {
    Found {
        data: e.data.clone(),
        fresh_remaining: e.fresh_until.saturating_duration_since(now),
        stale_remaining: e.stale_until.saturating_duration_since(now),
        stale: now >= e.fresh_until,
        tier,
    }
}

fn count_lookup(ns: &Namespace, l: &Lookup) {
    let s = &ns.stats;
    match l {
        Lookup::Miss => bump(&s.misses),
        Lookup::Hit(f) => bump(match (f.tier, f.stale) {
            (Tier::L1, false) => &s.hits_l1,
            (Tier::L1, true) => &s.stale_hits_l1,
            (Tier::L2, false) => &s.hits_l2,
            (Tier::L2, true) => &s.stale_hits_l2,
        }),
    }
}

/// Resolves the fresh period (default, capped, with jitter) and the stale window of a write.
pub fn lifetimes(
    policy: &NamespacePolicy,
    ttl: Option<Duration>,
    stale: Option<Duration>,
) -> (Duration, Duration) {
    let mut ttl = ttl.unwrap_or(policy.default_ttl).min(policy.max_ttl);
    if policy.jitter > 0.0 {
        let f: f64 = rand::rng().random_range(0.0..policy.jitter);
        ttl = ttl.mul_f64(1.0 + f);
    }
    let stale = stale.unwrap_or(policy.stale_ttl).min(policy.max_ttl);
    (ttl, stale)
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn f<T: Send + Sync>() {}
    f::<Cache>();
    f::<SyncState>();
}
