//! Per-process waiter coalescing: every caller waiting on the same key of the same namespace on
//! this replica shares one [`Flight`]. One of them at a time checks Redis (or the local store);
//! the others wait for its answer, a wake-up (fill or release event), or the fallback poll.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{watch, Notify};

use crate::engine::Found;

/// The shared wait of one key on this replica.
#[derive(Debug)]
pub(crate) struct Flight {
    /// Woken by fill and release events and local writes.
    pub wake: Notify,
    /// Held by the one waiter currently checking, so a wake-up costs one check per replica.
    pub checking: tokio::sync::Mutex<()>,
    /// The value a checker found, handed to every other waiter.
    pub filled: watch::Sender<Option<Found>>,
}

struct Slot {
    flight: Arc<Flight>,
    waiters: usize,
}

/// The waiter map of one replica.
#[derive(Default)]
pub(crate) struct Flights {
    map: Mutex<HashMap<String, Slot>>,
}

fn slot_key(ns: &str, key: &str) -> String {
    let mut k = String::with_capacity(ns.len() + key.len() + 1);
    k.push_str(ns);
    k.push('\0');
    k.push_str(key);
    k
}

/// Membership in a flight; leaving the last one removes the flight.
pub(crate) struct Joined<'a> {
    flights: &'a Flights,
    key: String,
    pub flight: Arc<Flight>,
}

impl Drop for Joined<'_> {
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

impl Flights {
    /// Joins (or starts) the flight of `key` in `ns`.
    pub fn join(&self, ns: &str, key: &str) -> Joined<'_> {
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

    /// How many keys have waiters now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_waiter_removes_the_flight() {
        let f = Flights::default();
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
