//! The near cache (L0): an in-process copy of one namespace's fresh entries, kept coherent by
//! that namespace's `Watch` stream.
//!
//! Rules:
//!
//! - Only fresh entries are kept, each until its server-side fresh period ends (never longer
//!   than [`NearCacheConfig::max_ttl`]), so L0 never serves stale and never outlives the server.
//! - Nothing is read from or stored in L0 until the Watch stream has started; when it fails or
//!   ends, L0 is cleared and bypassed until a new stream has started (reconnect with backoff).
//! - `key_changed` drops the key (unless L0 holds that very version); `tags_invalidated` drops
//!   entries carrying one of the tags (a scan: L0 is small); `namespace_flushed`, `gap`, and a
//!   sequence that is not the next one clear everything.
//! - A read that raced with an event must not store what it read: every event bumps an epoch
//!   (one per key stripe, one global), a read snapshots them before asking the server, stores,
//!   then re-checks and drops its own insert if an event came in between.
//! - A reply is kept only if the answering replica had applied at least the sequence this
//!   cache's Watch stream has reached (`applied_sequence` of the reply, sampled by the replica
//!   before its lookup). Behind a per-request balancer the Watch stream and the reads reach
//!   different replicas, and one that lags would otherwise hand back a value whose
//!   invalidation L0 has already applied, to be served from L0 until `max_ttl`. Such a reply
//!   is returned to the caller (it is what a read without L0 gets) but not stored.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::sync::Cache;
use tiercache_proto::v1;
use tokio::sync::oneshot;

use crate::{Client, Entry, Tier, WatchEvent, WatchEventKind};

/// Settings of a near cache; see [`Namespace::with_near_cache`](crate::Namespace::with_near_cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearCacheConfig {
    /// Budget in bytes (key + value + tags + a fixed overhead per entry). Default 16 MiB.
    pub max_bytes: u64,
    /// The longest an entry stays in L0, however long its fresh period. Default 60 s: a safety
    /// net should an invalidation ever be missed.
    pub max_ttl: Duration,
}

impl Default for NearCacheConfig {
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            max_ttl: Duration::from_secs(60),
        }
    }
}

/// Per-entry bookkeeping that is not part of the value.
const ENTRY_OVERHEAD: u64 = 96;
const STRIPES: usize = 64;

#[derive(Debug, Clone)]
struct NearEntry {
    value: Bytes,
    version: u64,
    tags: Vec<String>,
    absent: bool,
    born: u64,
    /// When the fresh period (as told by the server at receipt) ends.
    fresh_until: Instant,
    /// When the stale window ends, for the `stale_remaining` of served entries.
    gone_at: Instant,
}

impl NearEntry {
    fn weight(key: &str, e: &NearEntry) -> u32 {
        let tags: usize = e.tags.iter().map(String::len).sum();
        let w = ENTRY_OVERHEAD + (key.len() + e.value.len() + tags) as u64;
        u32::try_from(w).unwrap_or(u32::MAX)
    }
}

struct Expiry;

impl moka::Expiry<String, Arc<NearEntry>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<NearEntry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.fresh_until.saturating_duration_since(Instant::now()))
    }

    fn expire_after_update(
        &self,
        _key: &String,
        value: &Arc<NearEntry>,
        _updated_at: Instant,
        _duration_until_expiry: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.fresh_until.saturating_duration_since(Instant::now()))
    }
}

/// Epochs a read took before asking the server; see the module docs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    global: u64,
    stripe: u64,
}

/// Counters of one near cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NearCacheStats {
    /// Reads answered from L0.
    pub hits: u64,
    /// Entries in L0 now (approximate, like moka's count).
    pub entries: u64,
    /// Times L0 was cleared (flush, gap, broken stream, sequence jump).
    pub clears: u64,
    /// Whether the Watch stream is up and L0 is in use.
    pub live: bool,
    /// Replies not stored because the replica that answered had applied less than the Watch
    /// stream had delivered (a lagging replica behind a balancer).
    pub lagging_replies: u64,
    /// The namespace sequence the Watch stream has reached.
    pub sequence: u64,
}

pub(crate) struct NearCache {
    cache: Cache<String, Arc<NearEntry>>,
    max_ttl: Duration,
    /// True while the Watch stream is up; L0 is bypassed otherwise.
    live: AtomicBool,
    /// The sequence the Watch stream has reached: set by `Started` and gaps, raised by events,
    /// always before the event is applied (so a read that stored its reply and then sees the
    /// old position is undone by the event itself).
    position: AtomicU64,
    global: AtomicU64,
    stripes: [AtomicU64; STRIPES],
    hits: AtomicU64,
    clears: AtomicU64,
    /// Replies not stored because their replica lagged behind the Watch stream.
    lagging: AtomicU64,
    /// Dropping it stops the Watch task.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for NearCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NearCache")
            .field("entries", &self.cache.entry_count())
            .field("live", &self.live.load(Ordering::Relaxed))
            .finish()
    }
}

impl NearCache {
    /// Creates the cache and spawns the task that follows `namespace`'s Watch stream. The task
    /// ends when the cache is dropped.
    pub(crate) fn start(client: Client, namespace: String, config: NearCacheConfig) -> Arc<Self> {
        let (stop_tx, stop_rx) = oneshot::channel();
        let cache = Cache::builder()
            .max_capacity(config.max_bytes)
            .weigher(|k: &String, v: &Arc<NearEntry>| NearEntry::weight(k, v))
            .expire_after(Expiry)
            .build();
        let near = Arc::new(Self {
            cache,
            max_ttl: config.max_ttl,
            live: AtomicBool::new(false),
            position: AtomicU64::new(0),
            global: AtomicU64::new(0),
            stripes: std::array::from_fn(|_| AtomicU64::new(0)),
            hits: AtomicU64::new(0),
            clears: AtomicU64::new(0),
            lagging: AtomicU64::new(0),
            _stop: stop_tx,
        });
        tokio::spawn(follow(Arc::downgrade(&near), client, namespace, stop_rx));
        near
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// Returns the fresh L0 entry for `key`, as an [`Entry`] with tier [`Tier::Near`].
    pub(crate) fn get(&self, key: &str) -> Option<Entry> {
        if !self.is_live() {
            return None;
        }
        let e = self.cache.get(key)?;
        let now = Instant::now();
        if e.fresh_until <= now {
            return None;
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(Entry {
            value: e.value.clone(),
            version: e.version,
            tags: e.tags.clone(),
            fresh_remaining: e.fresh_until - now,
            stale_remaining: e.gone_at.saturating_duration_since(now),
            stale: false,
            tier: Tier::Near,
            absent: e.absent,
            born: e.born,
        })
    }

    /// Returns the version L0 holds for `key` right now, ignoring whether it is live (for
    /// diagnostics and tests).
    pub(crate) fn peek_version(&self, key: &str) -> Option<u64> {
        let e = self.cache.get(key)?;
        (e.fresh_until > Instant::now()).then_some(e.version)
    }

    pub(crate) fn ticket(&self, key: &str) -> Option<Ticket> {
        self.is_live().then(|| Ticket {
            global: self.global.load(Ordering::SeqCst),
            stripe: self.stripe(key).load(Ordering::SeqCst),
        })
    }

    /// Stores a fresh entry the server returned, unless an event came in since `ticket` or the
    /// answering replica had applied less (`applied_sequence`) than the Watch stream has
    /// delivered.
    pub(crate) fn insert(&self, key: &str, e: &Entry, ticket: Ticket, applied_sequence: u64) {
        if e.stale || e.fresh_remaining.is_zero() || e.tier == Tier::Near {
            return;
        }
        if applied_sequence < self.position.load(Ordering::SeqCst) {
            self.lagging.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let now = Instant::now();
        let entry = Arc::new(NearEntry {
            value: e.value.clone(),
            version: e.version,
            tags: e.tags.clone(),
            absent: e.absent,
            born: e.born,
            fresh_until: now + e.fresh_remaining.min(self.max_ttl),
            gone_at: now + e.stale_remaining,
        });
        self.cache.insert(key.to_string(), entry);
        // Insert, then check: an event applied before this check is seen here, and one
        // applied after it removes the entry itself.
        if !self.is_live()
            || self.global.load(Ordering::SeqCst) != ticket.global
            || self.stripe(key).load(Ordering::SeqCst) != ticket.stripe
            || applied_sequence < self.position.load(Ordering::SeqCst)
        {
            self.cache.invalidate(key);
        }
    }

    /// Drops `key` (this client wrote or deleted it).
    pub(crate) fn forget(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate(key);
    }

    pub(crate) fn stats(&self) -> NearCacheStats {
        self.cache.run_pending_tasks();
        NearCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            entries: self.cache.entry_count(),
            clears: self.clears.load(Ordering::Relaxed),
            live: self.is_live(),
            lagging_replies: self.lagging.load(Ordering::Relaxed),
            sequence: self.position.load(Ordering::SeqCst),
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        // FNV-1a: cheap and good enough to spread keys over the stripes.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        &self.stripes[(h % STRIPES as u64) as usize]
    }

    fn clear(&self) {
        self.global.fetch_add(1, Ordering::SeqCst);
        self.cache.invalidate_all();
        self.clears.fetch_add(1, Ordering::Relaxed);
    }

    fn go_down(&self) {
        self.live.store(false, Ordering::SeqCst);
        self.clear();
    }

    fn apply(&self, event: &WatchEventKind) {
        match event {
            WatchEventKind::Started => {}
            WatchEventKind::KeyChanged { key, version } => {
                self.stripe(key).fetch_add(1, Ordering::SeqCst);
                let keep = *version != 0
                    && self
                        .cache
                        .get(key.as_str())
                        .is_some_and(|e| e.version == *version);
                if !keep {
                    self.cache.invalidate(key.as_str());
                }
            }
            WatchEventKind::TagsInvalidated { tags } => {
                self.global.fetch_add(1, Ordering::SeqCst);
                let doomed: Vec<Arc<String>> = self
                    .cache
                    .iter()
                    .filter(|(_, e)| e.tags.iter().any(|t| tags.contains(t)))
                    .map(|(k, _)| k)
                    .collect();
                for k in doomed {
                    self.cache.invalidate(k.as_str());
                }
            }
            WatchEventKind::Flushed | WatchEventKind::Gap { .. } => self.clear(),
        }
    }
}

/// Follows the Watch stream of `namespace` for as long as the near cache lives.
async fn follow(
    near: std::sync::Weak<NearCache>,
    client: Client,
    namespace: String,
    mut stop: oneshot::Receiver<()>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(50);
    const MAX_BACKOFF: Duration = Duration::from_secs(5);
    let mut backoff = MIN_BACKOFF;
    loop {
        let opened = tokio::select! {
            _ = &mut stop => return,
            r = client.open_watch(v1::WatchRequest { namespace: namespace.clone() }) => r,
        };
        match opened {
            Ok(mut stream) => {
                // The sequence of the last event applied; `None` until known (the server
                // reports 0 when it has not synced the namespace yet, and after a gap).
                let mut last: Option<u64> = None;
                loop {
                    let msg = tokio::select! {
                        _ = &mut stop => return,
                        m = stream.message() => m,
                    };
                    let Some(near) = near.upgrade() else { return };
                    let event = match msg {
                        Ok(Some(m)) => match WatchEvent::from_wire(m) {
                            Some(e) => e,
                            // An event this SDK does not know: be safe.
                            None => {
                                near.clear();
                                continue;
                            }
                        },
                        Ok(None) | Err(_) => {
                            tracing::debug!(namespace, "near cache watch stream ended");
                            near.go_down();
                            break;
                        }
                    };
                    match &event.kind {
                        WatchEventKind::Started => {
                            near.position.store(event.sequence, Ordering::SeqCst);
                            near.clear();
                            last = (event.sequence > 0).then_some(event.sequence);
                            near.live.store(true, Ordering::SeqCst);
                            backoff = MIN_BACKOFF;
                        }
                        WatchEventKind::Gap { .. } => {
                            // Where the stream resumes; it may be lower than before when
                            // Redis's sequence was reset, and L0 is cleared anyway.
                            near.position.store(event.sequence, Ordering::SeqCst);
                            near.apply(&event.kind);
                            last = None;
                        }
                        kind => {
                            match last {
                                Some(l) if event.sequence <= l => {
                                    // Already reflected; dropping a key is still harmless.
                                }
                                Some(l) if event.sequence != l + 1 => {
                                    tracing::debug!(
                                        namespace,
                                        last = l,
                                        got = event.sequence,
                                        "near cache saw a sequence jump, clearing"
                                    );
                                    near.clear();
                                }
                                _ => {}
                            }
                            near.position.fetch_max(event.sequence, Ordering::SeqCst);
                            near.apply(kind);
                            last = Some(last.map_or(event.sequence, |l| l.max(event.sequence)));
                        }
                    }
                }
            }
            Err(e) => {
                tracing::debug!(namespace, error = %e, "near cache cannot open watch");
                match near.upgrade() {
                    Some(n) => n.go_down(),
                    None => return,
                }
            }
        }
        let pause = backoff.mul_f64(0.5 + rand::random::<f64>() * 0.5);
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(pause) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
