//! L1: one moka cache per server, bounded in bytes (`l1.max_bytes`), shared by every namespace.
//!
//! Entries are keyed by (namespace id, key). A namespace sees the shared cache through its own
//! [`L1`] handle, which counts the namespace's entries and bytes and clears the namespace in O(1):
//! `invalidate_all` bumps the namespace's generation (an entry of an older generation is never
//! served again) and asks moka to drop those entries in the background. So the memory L1 can use
//! is one server-wide figure however many namespaces exist, and a namespace costs nothing in L1
//! until it holds an entry.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::notification::RemovalCause;
use tokio::time::Instant;

use crate::namespace::{bump, L1Entry, NamespaceStats};

/// Bytes charged per L1 entry beyond its key, value and tags: what the process really pays per
/// entry (moka's node, its deque and timer nodes, the hash bucket, our `Arc<L1Entry>` with its
/// deadlines, the `Arc<str>` key and the value's own allocation), measured by `tiercache bench
/// --scenarios memory` at about 580 B for 100-byte values. Charging it keeps `l1.max_bytes` a
/// bound on resident memory rather than on payload bytes.
pub const L1_ENTRY_OVERHEAD: u64 = 576;

/// The default server-wide L1 budget (`l1.max_bytes`).
pub const DEFAULT_L1_MAX_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Clone, PartialEq, Eq, Hash)]
struct SharedKey {
    namespace: u64,
    key: Arc<str>,
}

/// What the shared cache holds: the entry, the generation of its namespace when it was
/// inserted, and the namespace's usage counters (so removals are charged back without a lookup).
#[derive(Clone)]
struct Slot {
    entry: Arc<L1Entry>,
    generation: u64,
    usage: Arc<Usage>,
}

/// A namespace's share of L1.
#[derive(Debug)]
struct Usage {
    entries: AtomicU64,
    bytes: AtomicU64,
    stats: Arc<NamespaceStats>,
}

fn weight(key: &str, e: &L1Entry) -> u64 {
    let tags: usize = e.data.tags.iter().map(|t| t.len() + 24).sum();
    key.len() as u64 + e.data.value.len() as u64 + tags as u64 + L1_ENTRY_OVERHEAD
}

struct SlotExpiry;

impl moka::Expiry<SharedKey, Slot> for SlotExpiry {
    fn expire_after_create(
        &self,
        _key: &SharedKey,
        value: &Slot,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(
            value
                .entry
                .l1_until
                .min(value.entry.stale_until)
                .saturating_duration_since(Instant::now()),
        )
    }

    /// A replaced entry gets its own deadline, not the old one's.
    fn expire_after_update(
        &self,
        key: &SharedKey,
        value: &Slot,
        updated_at: std::time::Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        self.expire_after_create(key, value, updated_at)
    }
}

/// The server-wide L1: one byte budget for all namespaces.
#[derive(Clone)]
pub struct SharedL1 {
    cache: moka::sync::Cache<SharedKey, Slot>,
    max_bytes: u64,
    next_id: Arc<AtomicU64>,
}

impl std::fmt::Debug for SharedL1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedL1")
            .field("max_bytes", &self.max_bytes)
            .finish()
    }
}

impl SharedL1 {
    /// An empty L1 holding at most `max_bytes` (weighted, see [`L1_ENTRY_OVERHEAD`]).
    pub fn new(max_bytes: u64) -> Self {
        let cache = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &SharedKey, v: &Slot| {
                u32::try_from(weight(&k.key, &v.entry)).unwrap_or(u32::MAX)
            })
            .expire_after(SlotExpiry)
            .support_invalidation_closures()
            .eviction_listener(|k: Arc<SharedKey>, v: Slot, cause| {
                v.usage.entries.fetch_sub(1, Ordering::Relaxed);
                v.usage
                    .bytes
                    .fetch_sub(weight(&k.key, &v.entry), Ordering::Relaxed);
                if cause == RemovalCause::Size {
                    bump(&v.usage.stats.l1_evictions);
                }
            })
            .build();
        Self {
            cache,
            max_bytes,
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// The server-wide budget in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Weighted bytes held now, across every namespace.
    pub fn used_bytes(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }

    /// A handle for one namespace. `cap` (the namespace's `l1_max_bytes`) stops admitting new
    /// entries of the namespace while it holds more; `None` admits up to the shared budget.
    pub(crate) fn handle(&self, stats: Arc<NamespaceStats>, cap: Option<u64>) -> L1 {
        L1 {
            shared: self.clone(),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            cap,
            usage: Arc::new(Usage {
                entries: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                stats,
            }),
        }
    }
}

/// One namespace's view of the shared L1, with the calls of a moka cache.
pub struct L1 {
    shared: SharedL1,
    id: u64,
    generation: AtomicU64,
    cap: Option<u64>,
    usage: Arc<Usage>,
}

impl std::fmt::Debug for L1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1").field("id", &self.id).finish()
    }
}

impl L1 {
    fn key(&self, key: &str) -> SharedKey {
        SharedKey {
            namespace: self.id,
            key: key.into(),
        }
    }

    /// The entry of `key`, unless it was cleared.
    pub fn get<Q: AsRef<str> + ?Sized>(&self, key: &Q) -> Option<Arc<L1Entry>> {
        let slot = self.shared.cache.get(&self.key(key.as_ref()))?;
        (slot.generation == self.generation.load(Ordering::Acquire)).then_some(slot.entry)
    }

    /// Holds `entry` for `key` (unless the namespace is over its own cap).
    pub fn insert(&self, key: Arc<str>, entry: Arc<L1Entry>) {
        let w = weight(&key, &entry);
        if let Some(cap) = self.cap {
            if self.usage.bytes.load(Ordering::Relaxed) + w > cap {
                self.shared.cache.invalidate(&SharedKey {
                    namespace: self.id,
                    key,
                });
                bump(&self.usage.stats.l1_evictions);
                return;
            }
        }
        self.usage.entries.fetch_add(1, Ordering::Relaxed);
        self.usage.bytes.fetch_add(w, Ordering::Relaxed);
        let slot = Slot {
            entry,
            generation: self.generation.load(Ordering::Acquire),
            usage: self.usage.clone(),
        };
        self.shared.cache.insert(
            SharedKey {
                namespace: self.id,
                key,
            },
            slot,
        );
    }

    /// Drops the entry of `key`.
    pub fn invalidate<Q: AsRef<str> + ?Sized>(&self, key: &Q) {
        self.shared.cache.invalidate(&self.key(key.as_ref()));
    }

    /// Drops every entry of the namespace: at once for readers, in the background for memory.
    pub fn invalidate_all(&self) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let id = self.id;
        let _ = self
            .shared
            .cache
            .invalidate_entries_if(move |k, v| k.namespace == id && v.generation < generation);
    }

    /// The most bytes the namespace's entries may take: its own cap (two-tier mode) or the
    /// shared budget, whichever is smaller.
    pub fn budget(&self) -> u64 {
        self.cap.unwrap_or(u64::MAX).min(self.shared.max_bytes)
    }

    /// Entries and weighted bytes the namespace holds in L1 now (cleared entries count until
    /// moka has dropped them).
    pub fn usage(&self) -> (u64, u64) {
        self.shared.cache.run_pending_tasks();
        (
            self.usage.entries.load(Ordering::Relaxed),
            self.usage.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        self.invalidate_all();
    }
}
