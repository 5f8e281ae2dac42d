//! Per-process waiter coalescing: every caller waiting on the same key of the same namespace on
//! this replica shares one [`Flight`]. One of them at a time checks Redis (or the local store);
//! the others wait for its answer, a wake-up (fill or release event), or the fallback poll.
//!
//! Generic over the value a checker hands to the other waiters (as foyer's `inflight.rs` is), so
//! this module knows nothing of the engine: GetOrSet waiters share a found entry, lock waiters
//! share nothing (`()`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

/// The shared wait of one key on this replica.
#[derive(Debug)]
pub(crate) struct Flight<V> {
    /// Woken by fill and release events and local writes.
    pub wake: Notify,
    /// Held by the one waiter currently checking, so a wake-up costs one check per replica.
    pub checking: tokio::sync::Mutex<()>,
    /// The value a checker found, handed to every other waiter.
    pub filled: watch::Sender<Option<V>>,
}

struct Slot<V> {
    flight: Arc<Flight<V>>,
    waiters: usize,
}

/// The waiter map of one replica.
pub(crate) struct Flights<V> {
    map: Mutex<HashMap<String, Slot<V>>>,
    /// Set once by [`Flights::drain`] (the replica is shutting down): waiters stop waiting.
    draining: AtomicBool,
    /// Notified when draining starts, for waits outside any flight (Watch streams).
    drained: Notify,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            drained: Notify::new(),
        }
    }
}

fn slot_key(ns: &str, key: &str) -> String {
    let mut k = String::with_capacity(ns.len() + key.len() + 1);
    k.push_str(ns);
    k.push('\0');
    k.push_str(key);
    k
}

/// Membership in a flight; leaving the last one removes the flight.
pub(crate) struct Joined<'a, V> {
    flights: &'a Flights<V>,
    key: String,
    pub flight: Arc<Flight<V>>,
}

impl<V> Drop for Joined<'_, V> {
    fn drop(&mut self) {
        let mut map = self.flights.map.lock();
        if let Some(slot) = map.get_mut(&self.key) {
            slot.waiters -= 1;
            if slot.waiters == 0 {
                map.remove(&self.key);
            }
        }
    }
}

impl<V> Flights<V> {
    /// Joins (or starts) the flight of `key` in `ns`.
    pub fn join(&self, ns: &str, key: &str) -> Joined<'_, V> {
        let k = slot_key(ns, key);
        let mut map = self.map.lock();
        let slot = map.entry(k.clone()).or_insert_with(|| Slot {
            flight: Arc::new(Flight {
                wake: Notify::new(),
                checking: tokio::sync::Mutex::new(()),
                filled: watch::channel(None).0,
            }),
            waiters: 0,
        });
        slot.waiters += 1;
        Joined {
            flights: self,
            key: k,
            flight: slot.flight.clone(),
        }
    }

    /// Wakes the waiters of `key` in `ns`, if any.
    pub fn wake(&self, ns: &str, key: &str) {
        let map = self.map.lock();
        if map.is_empty() {
            return;
        }
        if let Some(slot) = map.get(&slot_key(ns, key)) {
            slot.flight.wake.notify_waiters();
        }
    }

    /// Wakes every waiter (after a reconnect, when events may have been missed).
    pub fn wake_all(&self) {
        for slot in self.map.lock().values() {
            slot.flight.wake.notify_waiters();
        }
    }

    /// Starts draining: every waiter is woken and, seeing [`Flights::is_draining`], stops
    /// waiting; later waiters stop at their first wait.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.drained.notify_waiters();
        self.wake_all();
    }

    /// True once [`Flights::drain`] was called. A waiter checks it after enabling its wake-up,
    /// so a drain cannot fall between the check and the wait.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Completes once draining has started.
    pub async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_draining() {
                return;
            }
            notified.await;
        }
    }

    /// How many callers wait now, over every key.
    pub fn waiters(&self) -> usize {
        self.map.lock().values().map(|s| s.waiters).sum()
    }

    /// How many keys have waiters now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

/// Past this many claims, lapsed ones are dropped on the next claim.
const PRUNE_AT: usize = 1024;

/// Keys a GetOrSet caller on this replica computes without a lease while Redis is unreachable,
/// until when. Nothing can be stored then, so a miss tells the caller to compute; the first
/// caller of a key claims it for a lease TTL and the others wait on the key's flight (bounded by
/// their own wait), so they do not all compute at once. One of them claims it when the claim
/// lapses; once Redis answers again they get the fleet-wide lease.
#[derive(Debug, Default)]
pub(crate) struct Claims {
    map: Mutex<HashMap<(String, String), Instant>>,
}

impl Claims {
    /// Claims `key` of `ns` for `ttl`; false while another caller's claim holds.
    pub fn claim(&self, ns: &str, key: &str, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut map = self.map.lock();
        if map.len() >= PRUNE_AT {
            map.retain(|_, until| *until > now);
        }
        match map.get_mut(&(ns.to_string(), key.to_string())) {
            Some(until) if *until > now => false,
            Some(until) => {
                *until = now + ttl;
                true
            }
            None => {
                map.insert((ns.to_string(), key.to_string()), now + ttl);
                true
            }
        }
    }

    /// Forgets every claim (Redis answers again: leases apply).
    pub fn clear(&self) {
        self.map.lock().clear();
    }
}

#[cfg(test)]
mod claim_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_claim_per_key_until_it_lapses() {
        let c = Claims::default();
        let ttl = Duration::from_secs(1);
        assert!(c.claim("ns", "k", ttl));
        assert!(!c.claim("ns", "k", ttl));
        assert!(c.claim("ns", "other", ttl));
        tokio::time::advance(ttl).await;
        assert!(c.claim("ns", "k", ttl));
        c.clear();
        assert!(c.claim("ns", "k", ttl));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_waiter_removes_the_flight() {
        let f = Flights::<()>::default();
        let a = f.join("ns", "k");
        let b = f.join("ns", "k");
        assert!(Arc::ptr_eq(&a.flight, &b.flight));
        let c = f.join("ns", "other");
        assert_eq!(f.len(), 2);
        drop(a);
        assert_eq!(f.len(), 2);
        drop(b);
        drop(c);
        assert_eq!(f.len(), 0);
    }
}
