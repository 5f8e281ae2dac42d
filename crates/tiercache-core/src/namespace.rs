//! The per-namespace runtime state of one replica: L1, cached invalidation marks, counters and the
//! event fan-out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::codec::EntryData;
use crate::event::Event;
use crate::keys::{KeySpace, NamespaceKeys};
use crate::l1::SharedL1;
use crate::policy::NamespacePolicy;

pub use crate::l1::{L1, L1_ENTRY_OVERHEAD};
/// The most tag marks a replica caches per namespace before it forgets them all (they are
/// re-read from Redis on demand).
const MAX_CACHED_TAG_MARKS: usize = 100_000;

/// An entry held in L1, with its deadlines on the monotonic clock.
#[derive(Debug)]
pub struct L1Entry {
    pub data: EntryData,
    pub fresh_until: Instant,
    pub stale_until: Instant,
    /// When L1 must stop serving it (`l1_max_ttl` in two-tier mode; `stale_until` otherwise).
    pub l1_until: Instant,
}

/// Counters since start; read by `GetStats`.
#[derive(Debug, Default)]
pub struct NamespaceStats {
    pub hits_l1: AtomicU64,
    pub hits_l2: AtomicU64,
    pub stale_hits_l1: AtomicU64,
    pub stale_hits_l2: AtomicU64,
    pub misses: AtomicU64,
    pub sets: AtomicU64,
    pub deletes: AtomicU64,
    pub fills: AtomicU64,
    pub leases_granted: AtomicU64,
    pub lease_waits: AtomicU64,
    pub coalesced: AtomicU64,
    pub invalidations: AtomicU64,
    pub l1_evictions: AtomicU64,
    pub l1_clears: AtomicU64,
}

/// Increments a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What a replica knows of the namespace's sequence and invalidation marks.
///
/// Guarded by one lock: event application, L1 fills from L2 and local writes take it for writing, so
/// an L1 fill can check that nothing changed while it read Redis (the `epoch`), and events are
/// applied in order.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// The last applied event sequence. `None` until the replica has read the namespace's
    /// sequence after subscribing, and again after a gap or a dropped subscription; while `None`
    /// L1 is neither read nor filled (two-tier mode). In memory-only mode this is the
    /// authoritative sequence.
    pub last_seq: Option<u64>,
    /// The namespace flush mark.
    pub flush_mark: u64,
    /// Tag marks known to this replica; a tag absent here is unknown (read it from Redis).
    pub tag_marks: HashMap<String, u64>,
    /// Changes whenever anything that may invalidate L1 happens on this replica.
    pub epoch: u64,
    /// True in memory-only mode: the marks here are the truth, and an unknown tag was never
    /// invalidated.
    pub authoritative: bool,
    /// The run of the namespace sequence that `last_seq` belongs to (`tc:{ns}:run`; 0 when the
    /// namespace had no sequence yet). A different run means Redis lost the namespace's state
    /// (FLUSHALL, a restart without persistence, an evicted `seq` key): the sequence started
    /// over, so everything cached is dropped and the namespace resynced.
    pub run: u64,
    /// Events that arrived while a sync read was under way (`last_seq` is `None`): replayed on
    /// top of what the read saw, so none is lost between the read and taking this lock. `None`
    /// when no sync is under way (events are then dropped: the next sync reads their effect).
    pub pending: Option<Vec<(u64, Event)>>,
    /// Bumped whenever what this replica knew of the namespace is dropped (a gap, a reset, a
    /// dropped subscription). A sync read started before a bump must not complete after it: its
    /// answer may predate events that were dropped meanwhile, and the buffer it would take is a
    /// later sync's.
    pub resets: u64,
    /// Memory-only mode: how long a tag mark is kept (the longest an entry born before it can
    /// live, see [`NamespacePolicy::mark_lifetime`]).
    pub mark_ttl: Duration,
    /// Memory-only mode: when each recorded mark may be dropped, oldest first.
    pub mark_expiry: VecDeque<(Instant, String, u64)>,
}

/// The most events buffered for one namespace while its sync read is under way; past it the
/// buffer is dropped and that sync does not enable L1 (the next one starts over).
pub(crate) const MAX_PENDING_EVENTS: usize = 4096;

impl SyncState {
    /// Returns whether an entry born at `born` with `tags` is visible, or `None` when a tag mark
    /// is unknown.
    pub fn visible(&self, data: &EntryData) -> Option<bool> {
        if data.born < self.flush_mark {
            return Some(false);
        }
        for t in data.tags.iter() {
            match self.tag_marks.get(t.as_str()) {
                Some(&m) if data.born < m => return Some(false),
                Some(_) => {}
                None if self.authoritative => {}
                None => return None,
            }
        }
        Some(true)
    }

    /// Records a tag mark; marks only move forward. In memory-only mode the marks are the truth:
    /// each is kept until no entry born before it can still be alive (`mark_ttl`), then dropped.
    pub fn learn_tag(&mut self, tag: &str, mark: u64) {
        if self.authoritative {
            self.expire_marks();
            self.mark_expiry
                .push_back((Instant::now() + self.mark_ttl, tag.to_string(), mark));
        } else if self.tag_marks.len() >= MAX_CACHED_TAG_MARKS && !self.tag_marks.contains_key(tag)
        {
            self.tag_marks.clear();
        }
        let m = self.tag_marks.entry(tag.to_string()).or_insert(0);
        *m = (*m).max(mark);
    }

    /// Drops the authoritative marks whose time has passed (memory-only mode).
    pub(crate) fn expire_marks(&mut self) {
        let now = Instant::now();
        while let Some((at, _, _)) = self.mark_expiry.front() {
            if *at > now {
                break;
            }
            let (_, tag, mark) = self.mark_expiry.pop_front().expect("front exists");
            if self.tag_marks.get(&tag) == Some(&mark) {
                self.tag_marks.remove(&tag);
            }
        }
        if self.mark_expiry.len() < self.mark_expiry.capacity() / 4 {
            self.mark_expiry.shrink_to_fit();
        }
    }
}

/// Something held in a memory-only map until a deadline.
pub(crate) trait Expires {
    fn alive(&self, now: Instant) -> bool;
}

/// A memory-only map whose expired slots are swept out: each time it has doubled since the last
/// sweep, so the cost is amortized O(1) per insert and the map stays within twice its live size.
#[derive(Debug)]
pub(crate) struct ExpiringMap<T> {
    map: HashMap<String, T>,
    sweep_at: usize,
}

const SWEEP_MIN: usize = 64;

impl<T> Default for ExpiringMap<T> {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            sweep_at: SWEEP_MIN,
        }
    }
}

impl<T: Expires> ExpiringMap<T> {
    /// Inserts, sweeping expired slots first when due.
    pub fn insert(&mut self, key: String, value: T) {
        if self.map.len() >= self.sweep_at {
            let now = Instant::now();
            self.map.retain(|_, v| v.alive(now));
            self.map.shrink_to_fit();
            self.sweep_at = (self.map.len() * 2).max(SWEEP_MIN);
        }
        self.map.insert(key, value);
    }
}

impl<T> std::ops::Deref for ExpiringMap<T> {
    type Target = HashMap<String, T>;
    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<T> std::ops::DerefMut for ExpiringMap<T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.map
    }
}

/// A lease in memory-only mode. An empty `token` is a tombstone left by a revocation: it keeps
/// the revoked token (so its late Fill answers LEASE_REVOKED) until the lease would have expired.
#[derive(Debug, Clone)]
pub(crate) struct LeaseSlot {
    pub token: String,
    pub born: u64,
    pub expires: Instant,
    pub revoked: String,
}

impl Expires for LeaseSlot {
    fn alive(&self, now: Instant) -> bool {
        self.expires > now
    }
}

/// A held lock in memory-only mode. Removed on release or expiry: fencing tokens come from the
/// namespace's `fence_clock`, so they keep increasing per lock without keeping the slot.
#[derive(Debug, Clone)]
pub(crate) struct LockSlot {
    pub token: String,
    pub expires: Instant,
}

impl Expires for LockSlot {
    fn alive(&self, now: Instant) -> bool {
        self.expires > now
    }
}

/// One namespace on this replica.
pub struct Namespace {
    pub name: Arc<str>,
    pub policy: NamespacePolicy,
    /// True when the namespace was created on first use.
    pub dynamic: bool,
    pub stats: Arc<NamespaceStats>,
    pub(crate) keys: NamespaceKeys,
    pub(crate) l1: Option<L1>,
    pub(crate) sync: RwLock<SyncState>,
    pub(crate) events: Events,
    /// Serializes read-check-write sequences per key stripe in memory-only mode.
    pub(crate) stripes: Box<[Mutex<()>]>,
    /// Memory-only mode's leases, by key. Lock order: stripe, then `leases`, then `sync`.
    pub(crate) leases: Mutex<ExpiringMap<LeaseSlot>>,
    /// Memory-only mode's held locks, by name.
    pub(crate) locks: Mutex<ExpiringMap<LockSlot>>,
    /// Memory-only mode's fencing tokens: one increasing counter for every lock of the namespace.
    pub(crate) fence_clock: AtomicU64,
}

/// How many events a watched namespace buffers for a slow Watch stream.
pub const EVENT_RING: usize = 4096;

/// A namespace's event fan-out to Watch streams. The ring is allocated by the first watcher and
/// freed by the first event sent after the last watcher left, so an unwatched namespace holds
/// none.
#[derive(Debug, Default)]
pub(crate) struct Events {
    tx: Mutex<Option<broadcast::Sender<Event>>>,
}

impl Events {
    /// Sends to the current watchers; returns how many got it.
    pub fn send(&self, event: Event) -> usize {
        let mut tx = self.tx.lock();
        match tx.as_ref() {
            Some(t) if t.receiver_count() > 0 => t.send(event).unwrap_or(0),
            Some(_) => {
                *tx = None;
                0
            }
            None => 0,
        }
    }

    /// A new watcher: receives every event sent from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx
            .lock()
            .get_or_insert_with(|| broadcast::channel(EVENT_RING).0)
            .subscribe()
    }

    /// Whether the ring is allocated now.
    pub fn allocated(&self) -> bool {
        self.tx.lock().is_some()
    }
}

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.name)
            .field("dynamic", &self.dynamic)
            .finish()
    }
}

const STRIPES: usize = 64;

impl Namespace {
    pub(crate) fn new(
        name: &str,
        policy: NamespacePolicy,
        dynamic: bool,
        memory_only: bool,
        space: &KeySpace,
        shared_l1: &SharedL1,
    ) -> Self {
        let stats = Arc::new(NamespaceStats::default());
        // Memory-only mode has no other tier, so L1 is always on there, and the namespace's own
        // cap does not apply (L1 is the store: only the shared budget evicts).
        let l1 = (policy.l1_enabled || memory_only).then(|| {
            shared_l1.handle(stats.clone(), (!memory_only).then_some(policy.l1_max_bytes))
        });
        Self {
            name: name.into(),
            keys: space.namespace(name),
            stats,
            l1,
            sync: RwLock::new(SyncState {
                last_seq: memory_only.then_some(0),
                authoritative: memory_only,
                mark_ttl: policy.mark_lifetime(),
                ..SyncState::default()
            }),
            policy,
            dynamic,
            events: Events::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            leases: Mutex::new(ExpiringMap::default()),
            locks: Mutex::new(ExpiringMap::default()),
            fence_clock: AtomicU64::new(0),
        }
    }

    pub(crate) fn stripe(&self, key: &str) -> &Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.stripes[(h.finish() as usize) % STRIPES]
    }

    /// Entries and weighted bytes in L1 now.
    pub fn l1_usage(&self) -> (u64, u64) {
        match &self.l1 {
            Some(l1) => l1.usage(),
            None => (0, 0),
        }
    }

    /// The most bytes the namespace may hold in L1 (0 without L1): its own `l1_max_bytes` in
    /// two-tier mode, capped by the server-wide `l1.max_bytes` every namespace shares.
    pub fn l1_budget(&self) -> u64 {
        self.l1.as_ref().map_or(0, L1::budget)
    }

    /// Drops everything this replica cached for the namespace: L1 and the known marks (the
    /// flush mark too: after a reset of Redis state the next sync must take Redis's, which may
    /// be lower; a mark kept from before would hide every new entry).
    pub(crate) fn clear_locked(&self, sync: &mut SyncState) {
        if let Some(l1) = &self.l1 {
            l1.invalidate_all();
        }
        if !sync.authoritative {
            sync.tag_marks.clear();
            sync.flush_mark = 0;
            sync.pending = None;
        }
        sync.resets += 1;
        sync.epoch += 1;
        bump(&self.stats.l1_clears);
    }

    /// Subscribes to the namespace's events as this replica applies them.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

/// The sizes of a namespace's memory-only maps and whether its event ring is allocated: what
/// must shrink back when nothing is held (see [`Namespace::footprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub tag_marks: usize,
    pub leases: usize,
    pub locks: usize,
    pub event_ring: bool,
}

impl Namespace {
    /// The sizes of the namespace's maps now, after dropping what has expired.
    pub fn footprint(&self) -> Footprint {
        let now = Instant::now();
        let tag_marks = {
            let mut s = self.sync.write();
            if s.authoritative {
                s.expire_marks();
            }
            s.tag_marks.len()
        };
        let leases = {
            let mut l = self.leases.lock();
            l.retain(|_, v| v.alive(now));
            l.len()
        };
        let locks = {
            let mut l = self.locks.lock();
            l.retain(|_, v| v.alive(now));
            l.len()
        };
        Footprint {
            tag_marks,
            leases,
            locks,
            event_ring: self.events.allocated(),
        }
    }

    /// The last event sequence this replica applied (0 when not yet synced).
    pub fn last_sequence(&self) -> u64 {
        self.sync.read().last_seq.unwrap_or(0)
    }
}
