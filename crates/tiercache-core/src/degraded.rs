//! What a replica keeps while Redis is unreachable (degraded mode): which keys one of its
//! GetOrSet callers is computing without a lease.
//!
//! Nothing can be stored while degraded, so a GetOrSet miss tells the caller to compute without a
//! lease. To keep the callers of one key on one replica from all computing at once, the first
//! one claims the key for a lease TTL; the others wait on the key's flight (bounded by their own
//! wait) and one of them claims it when the claim lapses, or they get the fleet-wide lease once
//! Redis answers again.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Past this many claims, lapsed ones are dropped on the next claim.
const PRUNE_AT: usize = 1024;

/// Keys a caller on this replica is computing without a lease, until when.
#[derive(Debug, Default)]
pub(crate) struct ComputeClaims {
    map: Mutex<HashMap<(String, String), Instant>>,
}

impl ComputeClaims {
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
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_claim_per_key_until_it_lapses() {
        let c = ComputeClaims::default();
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
