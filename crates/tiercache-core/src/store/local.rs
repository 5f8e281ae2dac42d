//! The local store of memory-only mode: the same semantics as the Redis store inside one process.
//!
//! L1 is the store (always on in this mode). The namespace state is the truth: its sequence,
//! flush mark and tag marks, and its lease and lock slots. Read-check-write sequences are
//! serialized per key stripe. Lock order: stripe, then leases, then the namespace sync state.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::{LeaseGrant, StoreDelete, StoreFill, StoreSet};
use crate::codec::EntryData;
use crate::error::CoreError;
use crate::event::{Event, EventKind};
use crate::namespace::{L1Entry, LeaseSlot, LockSlot, Namespace, SyncState, L1};
use crate::types::WriteCondition;

/// The store of memory-only mode.
#[derive(Debug, Default)]
pub struct LocalStore {
    /// The version clock: microseconds, strictly increasing.
    version_clock: AtomicU64,
}

/// The L1 of a namespace, which is its store here.
fn store_of(ns: &Namespace) -> Result<&L1, CoreError> {
    ns.l1
        .as_ref()
        .ok_or_else(|| CoreError::Unavailable(format!("no store for namespace {}", ns.name)))
}

/// Takes the next namespace sequence.
fn next_sequence(s: &mut SyncState) -> u64 {
    s.epoch += 1;
    let seq = s.last_seq.unwrap_or(0) + 1;
    s.last_seq = Some(seq);
    seq
}

/// Revokes the lease on `key`: the holder's later Fill answers LEASE_REVOKED. An empty token is
/// a tombstone that keeps the revoked token until the lease would have expired.
fn revoke_lease(ns: &Namespace, key: &str) {
    let mut leases = ns.leases.lock();
    if let Some(slot) = leases.get_mut(key) {
        if slot.expires <= Instant::now() {
            leases.remove(key);
        } else if !slot.token.is_empty() {
            slot.revoked = std::mem::take(&mut slot.token);
        }
    }
}

fn publish_key(ns: &Namespace, sequence: u64, key: &str, version: u64) {
    let _ = ns.events.send(Event {
        sequence,
        kind: EventKind::KeyChanged {
            key: key.to_string(),
            version,
        },
    });
}

impl LocalStore {
    fn next_version(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        let mut prev = self.version_clock.load(Ordering::Relaxed);
        loop {
            let next = now.max(prev + 1);
            match self.version_clock.compare_exchange_weak(
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

    /// The version of the visible entry of `key`.
    fn current(ns: &Namespace, key: &str, now: Instant) -> Option<u64> {
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

    /// Whether a fresh visible entry exists for `key`.
    fn fresh(ns: &Namespace, key: &str, now: Instant) -> bool {
        let Some(e) = ns.l1.as_ref().and_then(|l1| l1.get(key)) else {
            return false;
        };
        now < e.fresh_until && ns.sync.read().visible(&e.data).unwrap_or(true)
    }

    /// Stores `data` with a new version and sequence and publishes the change; returns both.
    /// With `born` (a fill), the entry keeps that birth and is stored only if it is still
    /// visible, checked under the same lock that invalidations take.
    fn store(
        &self,
        ns: &Namespace,
        l1: &L1,
        key: &str,
        mut data: EntryData,
        ttl: Duration,
        born: Option<u64>,
    ) -> Option<(u64, u64)> {
        let now = Instant::now();
        let mut s = ns.sync.write();
        if let Some(born) = born {
            data.born = born;
            if !s.visible(&data).unwrap_or(true) {
                return None;
            }
        }
        data.version = self.next_version();
        let version = data.version;
        let seq = next_sequence(&mut s);
        data.born = born.unwrap_or(seq);
        let lifetime = ttl + data.stale_window;
        l1.insert(
            key.into(),
            Arc::new(L1Entry {
                data,
                fresh_until: now + ttl,
                stale_until: now + lifetime,
                l1_until: now + lifetime,
            }),
        );
        publish_key(ns, seq, key, version);
        Some((version, seq))
    }

    pub fn set(
        &self,
        ns: &Namespace,
        key: &str,
        data: &EntryData,
        ttl: Duration,
        condition: WriteCondition,
    ) -> Result<StoreSet, CoreError> {
        let l1 = store_of(ns)?;
        let _stripe = ns.stripe(key).lock();
        let current = Self::current(ns, key, Instant::now());
        match (condition, current) {
            (WriteCondition::IfAbsent, Some(current)) => return Ok(StoreSet::Exists { current }),
            (WriteCondition::IfVersion(v), current) if current.unwrap_or(0) != v => {
                return Ok(StoreSet::VersionMismatch {
                    current: current.unwrap_or(0),
                })
            }
            _ => {}
        }
        revoke_lease(ns, key);
        let (version, sequence) = self
            .store(ns, l1, key, data.clone(), ttl, None)
            .expect("a set without a birth is always stored");
        Ok(StoreSet::Stored { version, sequence })
    }

    pub fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StoreDelete, CoreError> {
        let l1 = store_of(ns)?;
        let _stripe = ns.stripe(key).lock();
        let current = Self::current(ns, key, Instant::now());
        if let Some(v) = if_version {
            if current.unwrap_or(0) != v {
                return Ok(StoreDelete::VersionMismatch {
                    current: current.unwrap_or(0),
                });
            }
        }
        revoke_lease(ns, key);
        let mut s = ns.sync.write();
        let sequence = next_sequence(&mut s);
        l1.invalidate(key);
        publish_key(ns, sequence, key, 0);
        Ok(match current {
            Some(_) => StoreDelete::Deleted { sequence },
            None => StoreDelete::NotFound { sequence },
        })
    }

    pub fn acquire_lease(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> LeaseGrant {
        let _stripe = ns.stripe(key).lock();
        let now = Instant::now();
        if Self::fresh(ns, key, now) {
            return LeaseGrant::FreshEntryExists;
        }
        let mut leases = ns.leases.lock();
        let revoked = match leases.get(key) {
            Some(s) if s.expires > now && !s.token.is_empty() => {
                return LeaseGrant::Held {
                    remaining: s.expires - now,
                }
            }
            Some(s) if s.expires > now => s.revoked.clone(),
            _ => String::new(),
        };
        let born = ns.sync.read().last_seq.unwrap_or(0);
        leases.insert(
            key.to_string(),
            LeaseSlot {
                token: token.to_string(),
                born,
                expires: now + ttl,
                revoked,
            },
        );
        LeaseGrant::Granted { born }
    }

    pub fn fill(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
        data: &EntryData,
        ttl: Duration,
    ) -> Result<StoreFill, CoreError> {
        let l1 = store_of(ns)?;
        let _stripe = ns.stripe(key).lock();
        let now = Instant::now();
        let mut leases = ns.leases.lock();
        let born = match leases.get(key) {
            Some(s) if s.expires <= now => {
                leases.remove(key);
                return Ok(StoreFill::Expired);
            }
            Some(s) if s.token == token => s.born,
            Some(s) if s.revoked == token => return Ok(StoreFill::Revoked),
            _ => return Ok(StoreFill::Expired),
        };
        leases.remove(key);
        // An invalidation since the grant hides the value, so it is not stored.
        Ok(
            match self.store(ns, l1, key, data.clone(), ttl, Some(born)) {
                Some((version, sequence)) => StoreFill::Stored {
                    version,
                    sequence,
                    born,
                },
                None => StoreFill::Revoked,
            },
        )
    }

    pub fn release_lease(&self, ns: &Namespace, key: &str, token: &str) -> bool {
        let mut leases = ns.leases.lock();
        match leases.get(key) {
            Some(s) if s.token == token && s.expires > Instant::now() => {
                leases.remove(key);
                true
            }
            _ => false,
        }
    }

    pub fn lease_info(&self, ns: &Namespace, key: &str) -> Option<(u64, Duration)> {
        let now = Instant::now();
        ns.leases
            .lock()
            .get(key)
            .filter(|s| !s.token.is_empty() && s.expires > now)
            .map(|s| (s.born, s.expires - now))
    }

    pub fn try_lock(
        &self,
        ns: &Namespace,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<u64, Duration> {
        let now = Instant::now();
        let mut locks = ns.locks.lock();
        if let Some(slot) = locks.get(name) {
            if slot.expires > now {
                return Err(slot.expires - now);
            }
        }
        locks.insert(
            name.to_string(),
            LockSlot {
                token: token.to_string(),
                expires: now + ttl,
            },
        );
        Ok(ns.fence_clock.fetch_add(1, Ordering::Relaxed) + 1)
    }

    pub fn renew_lock(&self, ns: &Namespace, name: &str, token: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        match ns.locks.lock().get_mut(name) {
            Some(s) if s.token == token && s.expires > now => {
                s.expires = now + ttl;
                true
            }
            _ => false,
        }
    }

    pub fn release_lock(&self, ns: &Namespace, name: &str, token: &str) -> bool {
        let now = Instant::now();
        let mut locks = ns.locks.lock();
        match locks.get(name) {
            Some(s) if s.token == token && s.expires > now => {
                locks.remove(name);
                true
            }
            Some(s) if s.expires <= now => {
                locks.remove(name);
                false
            }
            _ => false,
        }
    }

    pub fn invalidate_tags(&self, ns: &Namespace, tags: &[String]) -> u64 {
        let mut s = ns.sync.write();
        let seq = next_sequence(&mut s);
        for t in tags {
            s.learn_tag(t, seq);
        }
        let _ = ns.events.send(Event {
            sequence: seq,
            kind: EventKind::TagsInvalidated {
                tags: tags.to_vec(),
            },
        });
        seq
    }

    pub fn flush(&self, ns: &Namespace) -> u64 {
        let mut s = ns.sync.write();
        let seq = next_sequence(&mut s);
        s.flush_mark = seq;
        if let Some(l1) = &ns.l1 {
            l1.invalidate_all();
        }
        let _ = ns.events.send(Event {
            sequence: seq,
            kind: EventKind::Flushed,
        });
        seq
    }
}
