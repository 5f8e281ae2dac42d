//! The read path: L1, then one round trip to the Redis store for the rest (memory-only mode has
//! nothing behind L1); L2 hits fill L1 only when nothing that could invalidate it happened
//! meanwhile.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;

use crate::codec::EntryData;
use crate::engine::Cache;
use crate::error::CoreError;
use crate::namespace::{bump, L1Entry, Namespace};
use crate::store::RedisStore;
use crate::types::{Found, Lookup, ReadOptions, Tier};

impl Cache {
    /// Returns the namespace sequence this replica has applied, for a read reply to carry: a
    /// lookup (`get`, `get_many`, `get_or_set`) that starts after this call reflects every
    /// event up to it. Applying an event drops its L1 copies under the lock this reads, and L1
    /// fills and L2 reads check the marks and epoch that lock guards, so nothing older than the
    /// returned sequence can be served after it. 0 while the replica is not synced (subscription
    /// down, after a gap until resynced): then nothing is promised.
    ///
    /// A client-side near cache compares it with its Watch position, so that a replica that
    /// lags behind the one it watches cannot refill it with a value already invalidated.
    pub fn applied_sequence(&self, ns: &Namespace) -> u64 {
        ns.last_sequence()
    }

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
        self.lookup_many(ns, keys, opts, true, None).await
    }

    /// [`Cache::get_many`] that refuses ([`CoreError::ReplyTooLarge`]) to return more than
    /// `max_bytes` of values. The Redis read checks the sizes (`STRLEN`) before it reads any
    /// value, so a refused batch costs Redis no large reply.
    pub async fn get_many_within(
        &self,
        ns: &Namespace,
        keys: &[&str],
        opts: ReadOptions,
        max_bytes: u64,
    ) -> Result<Vec<Lookup>, CoreError> {
        self.lookup_many(ns, keys, opts, true, Some(max_bytes))
            .await
    }

    /// Reads keys; `count` says whether the lookups count in the namespace statistics (waiters'
    /// re-checks do not); `limit` bounds the value bytes returned.
    pub(crate) async fn lookup_many(
        &self,
        ns: &Namespace,
        keys: &[&str],
        opts: ReadOptions,
        count: bool,
        limit: Option<u64>,
    ) -> Result<Vec<Lookup>, CoreError> {
        let now = Instant::now();
        let degraded = self.redis_down();
        let mut out: Vec<Option<Lookup>> = keys
            .iter()
            .map(|k| self.l1_lookup(ns, k, now, degraded).map(Lookup::Hit))
            .collect();
        // What L1 answered counts against the limit; Redis may return the rest.
        let l2_limit = match limit {
            Some(limit) => {
                let l1_bytes: u64 = out
                    .iter()
                    .flatten()
                    .map(|l| match l {
                        Lookup::Hit(f) => f.data.value.len() as u64,
                        Lookup::Miss => 0,
                    })
                    .sum();
                if l1_bytes > limit {
                    return Err(CoreError::ReplyTooLarge { limit });
                }
                Some(limit - l1_bytes)
            }
            None => None,
        };
        if let Some(l2) = self.healthy_l2() {
            let missing: Vec<usize> = (0..keys.len()).filter(|&i| out[i].is_none()).collect();
            if !missing.is_empty() {
                match self
                    .read_l2(ns, l2, keys, &missing, &mut out, l2_limit)
                    .await
                {
                    Ok(()) => {}
                    Err(CoreError::ReplyTooLarge { .. }) => {
                        return Err(CoreError::ReplyTooLarge {
                            limit: limit.unwrap_or(0),
                        })
                    }
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
        l2: &RedisStore,
        keys: &[&str],
        missing: &[usize],
        out: &mut [Option<Lookup>],
        limit: Option<u64>,
    ) -> Result<(), CoreError> {
        let epoch = self.ensure_synced(ns).await?;
        let miss_keys: Vec<&str> = missing.iter().map(|&i| keys[i]).collect();
        let read = l2.read(&ns.keys, &miss_keys, limit).await?;
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
            let found = Found::of(&l1e, now, Tier::L2);
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
        let two_tier = self.inner.store.redis().is_some();
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
            Some(true) => Some(Found::of(&e, now, Tier::L1)),
            Some(false) => {
                // In memory-only mode L1 is the store: like L2 in two-tier mode it keeps the
                // hidden entry until it expires (its tag marks outlive it), so Inspect can still
                // say which flush or tag hid it. Dropping it here freed nothing an invalidation
                // without a later read does not hold anyway.
                if two_tier {
                    l1.invalidate(key);
                }
                None
            }
            None => None,
        }
    }

    /// Makes sure the replica knows the namespace's sequence and flush mark. Returns the epoch
    /// an L1 fill must still see, or `None` when L1 must not be filled (subscription down).
    pub(crate) async fn ensure_synced(&self, ns: &Namespace) -> Result<Option<u64>, CoreError> {
        let Some(l2) = self.inner.store.redis() else {
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
        let resets = {
            // Events from now until the read's answer is applied are buffered, then replayed
            // on top of it: none can slip between the read and the lock.
            let mut s = ns.sync.write();
            if s.last_seq.is_some() {
                return Ok(Some(s.epoch));
            }
            if s.pending.is_none() {
                s.pending = Some(Vec::new());
            }
            s.resets
        };
        let (seq, flush, run) = l2.namespace_sync(&ns.keys).await?;
        self.sync_paused().await;
        let mut s = ns.sync.write();
        if s.last_seq.is_none() {
            if generation != self.inner.bus_generation.load(Ordering::Acquire)
                || !self.inner.bus_up.load(Ordering::Acquire)
                || resets != s.resets
            {
                // Something was dropped since this read was sent (its answer may predate it,
                // and the buffer now belongs to a later sync): leave it to that one.
                return Ok(None);
            }
            // No buffer: it overflowed or a reset dropped it; the next read starts over.
            let Some(pending) = s.pending.take() else {
                return Ok(None);
            };
            s.last_seq = Some(seq);
            s.run = run;
            s.flush_mark = s.flush_mark.max(flush);
            s.epoch += 1;
            for (event_run, event) in pending {
                if event_run == run && event.sequence <= seq {
                    // Already reflected in what the read saw.
                    continue;
                }
                crate::bus::apply_locked(ns, &mut s, event_run, event);
            }
            if s.last_seq.is_none() {
                return Ok(None);
            }
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
            // Only while still synced: a gap or reset since the sync cleared the cached marks
            // (the flush mark too), and marks that no longer cover what Redis holds would let a
            // flushed or invalidated entry through. Then the marks are read from Redis.
            let s = ns.sync.read();
            if s.last_seq.is_some() || s.authoritative {
                if let Some(v) = s.visible(data) {
                    return Ok(v);
                }
            }
        }
        let Some(l2) = self.inner.store.redis() else {
            return Ok(ns.sync.read().visible(data).unwrap_or(true));
        };
        let tags: Vec<&str> = data.tags.iter().map(String::as_str).collect();
        let ((_, flush), marks) =
            futures::try_join!(l2.namespace_marks(&ns.keys), l2.tag_marks(&ns.keys, &tags))?;
        if synced {
            // Keep what Redis just said, the flush mark too: a later lookup on cached marks must
            // not find visible what this one found hidden (the flush's event may still be on
            // its way).
            let mut s = ns.sync.write();
            for (t, m) in tags.iter().zip(&marks) {
                s.learn_tag(t, *m);
            }
            s.flush_mark = s.flush_mark.max(flush);
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
}

fn count_lookup(ns: &Namespace, l: &Lookup) {
    count_result(ns, lookup_result(l));
}

/// What a lookup found, for the statistics: `None` for a miss, else the tier and staleness.
pub(crate) fn lookup_result(l: &Lookup) -> Option<(Tier, bool)> {
    match l {
        Lookup::Miss => None,
        Lookup::Hit(f) => Some((f.tier, f.stale)),
    }
}

/// Counts one lookup's result (see [`lookup_result`]) in the namespace statistics.
pub(crate) fn count_result(ns: &Namespace, result: Option<(Tier, bool)>) {
    let s = &ns.stats;
    bump(match result {
        None => &s.misses,
        Some((Tier::L1, false)) => &s.hits_l1,
        Some((Tier::L1, true)) => &s.stale_hits_l1,
        Some((Tier::L2, false)) => &s.hits_l2,
        Some((Tier::L2, true)) => &s.stale_hits_l2,
    });
}
