//! Degraded mode, the one fallback rule: while Redis is unreachable reads serve L1, every
//! mutation is refused and drops the replica's L1 copy of its keys, and a probe leaves the mode
//! when Redis answers. Only an unreachable Redis trips it ([`CoreError::is_unreachable`]); an
//! error reply changes no mode. See docs/architecture.md, "Degraded mode".

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::engine::{Cache, Inner};
use crate::error::CoreError;
use crate::namespace::Namespace;
use crate::store::{RedisStore, Store};

/// How often a degraded replica checks whether Redis answers again.
pub const REDIS_PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// How often a healthy replica checks, in the background, that Redis answers (a `PING` on the
/// data connection). With no answer within the response timeout the replica enters degraded mode,
/// traffic or not: within `REDIS_HEALTH_INTERVAL + response_timeout` of an outage (1.25 s with
/// the default 1 s timeout).
pub const REDIS_HEALTH_INTERVAL: Duration = Duration::from_millis(250);

impl Cache {
    /// Starts the background health check (two-tier mode); it lives as long as the engine.
    pub(crate) fn start_health_check(&self) {
        let task = tokio::spawn(health_loop(Arc::downgrade(&self.inner)));
        *self.inner.health_task.lock() = Some(task);
    }

    /// The Redis store when it is configured and reachable.
    pub(crate) fn healthy_l2(&self) -> Option<&RedisStore> {
        self.inner.store.redis().filter(|_| !self.redis_down())
    }

    /// The store, for an operation that needs it (every mutation; locks and lease reads):
    /// refused while Redis is unreachable. This and [`Cache::writable`] are the one fallback rule.
    pub(crate) fn usable_store(&self) -> Result<&Store, CoreError> {
        match &self.inner.store {
            Store::Redis(_) if self.redis_down() => Err(unreachable()),
            store => Ok(store),
        }
    }

    /// The store for a mutation of `keys`. While Redis is unreachable the mutation is refused
    /// and this replica drops its L1 copy of `keys`, so it never serves what a caller just tried
    /// to change or remove.
    pub(crate) fn writable(&self, ns: &Namespace, keys: &[&str]) -> Result<&Store, CoreError> {
        self.usable_store().inspect_err(|_| self.forget(ns, keys))
    }

    /// Passes the Redis result of a mutation of `key` on. A failed mutation may or may not have
    /// reached Redis, so this replica drops its L1 copy; an unreachable Redis trips degraded mode.
    /// In memory-only mode L1 is the store itself: a failed write changed nothing, and dropping
    /// the key would delete what the last acknowledged write stored.
    pub(crate) fn written<T>(
        &self,
        ns: &Namespace,
        key: &str,
        r: Result<T, CoreError>,
    ) -> Result<T, CoreError> {
        if let Err(e) = &r {
            if self.inner.store.redis().is_some() {
                self.forget(ns, &[key]);
            }
            self.trip(e);
        }
        r
    }

    /// Drops this replica's L1 copy of `keys`. The epoch bump keeps a Redis read that is under
    /// way from putting an older copy back.
    fn forget(&self, ns: &Namespace, keys: &[&str]) {
        let Some(l1) = &ns.l1 else { return };
        let mut s = ns.sync.write();
        s.epoch += 1;
        for k in keys {
            l1.invalidate(*k);
        }
    }

    /// Enters degraded mode after Redis was found unreachable (other errors are ignored) and
    /// starts the probe that leaves it.
    pub(crate) fn trip(&self, e: &CoreError) {
        if !e.is_unreachable() || self.inner.store.redis().is_none() {
            return;
        }
        if self.inner.redis_down.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::warn!(error = %e, "redis unreachable, entering degraded mode");
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(REDIS_PROBE_INTERVAL).await;
                let Some(inner) = weak.upgrade() else { return };
                let cache = Cache { inner };
                let Some(l2) = cache.inner.store.redis() else {
                    return;
                };
                if l2.ping().await.is_ok() {
                    // L1 is not cleared: nothing was written to it while degraded, and if the
                    // subscription dropped (events may have been missed) the bus loop clears it
                    // when it resubscribes; a sequence gap clears a namespace on its own.
                    cache.inner.redis_down.store(false, Ordering::Release);
                    cache.inner.compute_claims.clear();
                    cache.inner.flights.wake_all();
                    cache.inner.lock_flights.wake_all();
                    tracing::info!("redis reachable again, leaving degraded mode");
                    return;
                }
            }
        });
    }
}

/// Pings Redis every [`REDIS_HEALTH_INTERVAL`] while the replica is not degraded, and trips
/// degraded mode when the ping finds Redis unreachable, the same rule as a failed data call
/// (refused, reset, or no answer within the response timeout; an error reply trips nothing).
/// Once tripped, the probe in [`Cache::trip`] takes over until Redis answers again.
async fn health_loop(inner: Weak<Inner>) {
    let mut ticker = tokio::time::interval(REDIS_HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(i) = inner.upgrade() else { return };
        let cache = Cache { inner: i };
        if cache.redis_down() {
            continue;
        }
        let Some(l2) = cache.inner.store.redis() else {
            return;
        };
        let timeout = l2.options().response_timeout;
        let r = match tokio::time::timeout(timeout, l2.health_check()).await {
            Ok(r) => r,
            Err(_) => Err(CoreError::Unavailable(
                "no answer to the health check within the response timeout".into(),
            )),
        };
        if let Err(e) = r {
            cache.trip(&e);
        }
    }
}

/// The error of a mutation refused because Redis is unreachable.
pub(crate) fn unreachable() -> CoreError {
    CoreError::Unavailable("redis is unreachable".into())
}
