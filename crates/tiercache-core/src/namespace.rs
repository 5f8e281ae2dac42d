//! The per-namespace runtime state of one replica: L1, cached invalidation marks, counters and the
//! event fan-out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use parking_lot::{Mutex, RwLock};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::codec::EntryData;
use crate::event::Event;
use crate::keys::{KeySpace, NamespaceKeys};
use crate::policy::NamespacePolicy;

/// Bytes charged per L1 entry beyond its key, value and tags: what the process really pays per
/// entry (moka's node, its deque and timer nodes, the hash bucket, our `Arc<L1Entry>` with its
/// deadlines, the `Arc<str>` key and the value's own allocation), measured by `tiercache bench
/// --scenarios memory` at about 580 B for 100-byte values. Charging it keeps `l1_max_bytes` a
/// bound on resident memory rather than on payload bytes.
pub const L1_ENTRY_OVERHEAD: u64 = 576;
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

impl L1Entry {
    fn weight(key: &str, e: &L1Entry) -> u32 {
        let tags: usize = e.data.tags.iter().map(|t| t.len() + 24).sum();
        let w = key.len() as u64 + e.data.value.len() as u64 + tags as u64 + L1_ENTRY_OVERHEAD;
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

struct L1Expiry;

impl moka::Expiry<Arc<str>, Arc<L1Entry>> for L1Expiry {
    fn expire_after_create(
        &self,
        _key: &Arc<str>,
        value: &Arc<L1Entry>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            value
                .l1_until
                .min(value.stale_until)
                .saturating_duration_since(Instant::now()),
        )
    }
}

/// The L1 map of one namespace, bounded by bytes.
pub type L1 = moka::sync::Cache<Arc<str>, Arc<L1Entry>>;

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

    /// Records a tag mark; marks only move forward.
    pub fn learn_tag(&mut self, tag: &str, mark: u64) {
        if !self.authoritative
            && self.tag_marks.len() >= MAX_CACHED_TAG_MARKS
            && !self.tag_marks.contains_key(tag)
        {
            self.tag_marks.clear();
        }
        let m = self.tag_marks.entry(tag.to_string()).or_insert(0);
        *m = (*m).max(mark);
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

/// A lock in memory-only mode; `fence` survives releases so fencing tokens keep increasing.
#[derive(Debug, Clone)]
pub(crate) struct LockSlot {
    pub token: String,
    pub expires: Instant,
    pub fence: u64,
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
    pub(crate) events: broadcast::Sender<Event>,
    /// Serializes read-check-write sequences per key stripe in memory-only mode.
    pub(crate) stripes: Box<[Mutex<()>]>,
    /// Memory-only mode's leases, by key. Lock order: stripe, then `leases`, then `sync`.
    pub(crate) leases: Mutex<HashMap<String, LeaseSlot>>,
    /// Memory-only mode's locks, by name.
    pub(crate) locks: Mutex<HashMap<String, LockSlot>>,
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
    ) -> Self {
        let stats = Arc::new(NamespaceStats::default());
        // Memory-only mode has no other tier, so L1 is always on there.
        let l1 = (policy.l1_enabled || memory_only).then(|| {
            let evictions = stats.clone();
            moka::sync::Cache::builder()
                .max_capacity(policy.l1_max_bytes)
                .weigher(|k: &Arc<str>, v: &Arc<L1Entry>| L1Entry::weight(k, v))
                .expire_after(L1Expiry)
                .eviction_listener(move |_k, _v, cause| {
                    if cause == RemovalCause::Size {
                        bump(&evictions.l1_evictions);
                    }
                })
                .build()
        });
        let (events, _) = broadcast::channel(4096);
        Self {
            name: name.into(),
            keys: space.namespace(name),
            policy,
            dynamic,
            stats,
            l1,
            sync: RwLock::new(SyncState {
                last_seq: memory_only.then_some(0),
                authoritative: memory_only,
                ..SyncState::default()
            }),
            events,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            leases: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
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
            Some(l1) => {
                l1.run_pending_tasks();
                (l1.entry_count(), l1.weighted_size())
            }
            None => (0, 0),
        }
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
        sync.epoch += 1;
        bump(&self.stats.l1_clears);
    }

    /// Subscribes to the namespace's events as this replica applies them.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }
}

impl Namespace {
    /// The last event sequence this replica applied (0 when not yet synced).
    pub fn last_sequence(&self) -> u64 {
        self.sync.read().last_seq.unwrap_or(0)
    }
}
