//! The write path: the store first (one atomic step there), then this replica's L1, only if no
//! later event was applied meanwhile. Every mutation goes through `Cache::writable` and
//! `Cache::written`, the degraded-mode rule.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::EntryData;
use crate::engine::Cache;
use crate::error::CoreError;
use crate::namespace::{bump, L1Entry, Namespace};
use crate::policy::lifetimes;
use crate::store::{Store, StoreDelete, StoreSet};
use crate::types::{DeleteOutcome, SetOutcome, WriteArgs, WriteCondition};

impl Cache {
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
        let store = self.writable(ns, &[key])?;
        let r = self
            .set_in(store, ns, key, &mut data, ttl, args.condition)
            .await;
        let outcome = self.written(ns, key, r)?;
        if matches!(outcome, SetOutcome::Stored { .. }) {
            bump(&ns.stats.sets);
            self.inner.flights.wake(&ns.name, key);
        }
        Ok(outcome)
    }

    async fn set_in(
        &self,
        store: &Store,
        ns: &Namespace,
        key: &str,
        data: &mut EntryData,
        ttl: Duration,
        condition: WriteCondition,
    ) -> Result<SetOutcome, CoreError> {
        // Sync first so the write can go through to L1 on a namespace's first write.
        self.ensure_synced(ns).await?;
        Ok(match store.set(ns, key, data, ttl, condition).await? {
            StoreSet::Stored { version, sequence } => {
                data.version = version;
                data.born = sequence;
                self.l1_after_write(ns, key, Some((data.clone(), ttl)), sequence);
                SetOutcome::Stored { version }
            }
            StoreSet::VersionMismatch { current } => SetOutcome::VersionMismatch { current },
            StoreSet::Exists { current } => SetOutcome::Exists { current },
        })
    }

    /// Updates L1 after a store write that took `sequence`: holds the new entry only if no later
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
        if s.authoritative {
            // L1 is the store (memory-only mode): the store has updated it already.
            return;
        }
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
        let store = self.writable(ns, &[key])?;
        let outcome = match self.written(ns, key, store.delete(ns, key, if_version).await)? {
            StoreDelete::Deleted { sequence } => {
                self.l1_after_write(ns, key, None, sequence);
                DeleteOutcome::Deleted
            }
            StoreDelete::NotFound { sequence } => {
                self.l1_after_write(ns, key, None, sequence);
                DeleteOutcome::NotFound
            }
            StoreDelete::VersionMismatch { current } => DeleteOutcome::VersionMismatch { current },
        };
        if outcome == DeleteOutcome::Deleted {
            bump(&ns.stats.deletes);
        }
        if !matches!(outcome, DeleteOutcome::VersionMismatch { .. }) {
            self.inner.flights.wake(&ns.name, key);
        }
        Ok(outcome)
    }

    /// Hides every entry carrying any of `tags`; returns the sequence taken.
    pub async fn invalidate_tags(&self, ns: &Namespace, tags: &[String]) -> Result<u64, CoreError> {
        // An invalidation must reach every replica: no fallback while Redis is unreachable.
        let seq = self
            .usable_store()?
            .invalidate_tags(ns, tags)
            .await
            .inspect_err(|e| self.trip(e))?;
        {
            let mut s = ns.sync.write();
            for t in tags {
                s.learn_tag(t, seq);
            }
            s.epoch += 1;
        }
        bump(&ns.stats.invalidations);
        Ok(seq)
    }

    /// Hides every entry of the namespace; returns the sequence taken.
    pub async fn flush(&self, ns: &Namespace) -> Result<u64, CoreError> {
        let seq = self
            .usable_store()?
            .flush(ns)
            .await
            .inspect_err(|e| self.trip(e))?;
        {
            let mut s = ns.sync.write();
            s.flush_mark = s.flush_mark.max(seq);
            s.epoch += 1;
        }
        if let Some(l1) = &ns.l1 {
            l1.invalidate_all();
        }
        bump(&ns.stats.invalidations);
        Ok(seq)
    }
}
