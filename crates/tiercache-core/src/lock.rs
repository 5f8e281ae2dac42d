//! Distributed locks: `SET NX PX` with a 128-bit owner token, compare-and-act renew and release,
//! and a fencing token from a per-lock counter in the same hash slot that increases on every grant.
//!
//! In two-tier mode a lock never degrades to a local one: if Redis cannot be reached the call fails
//! with [`CoreError::Unavailable`].

use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument;

use crate::engine::Cache;
use crate::error::CoreError;
use crate::lease::new_token;
use crate::namespace::Namespace;

/// How often a lock waiter re-tries when no release wake-up came (an expired holder).
pub const LOCK_POLL: Duration = Duration::from_millis(50);

/// What an acquisition got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockAcquire {
    Acquired {
        owner_token: String,
        fencing_token: u64,
    },
    /// The wait bound passed while another owner held the lock.
    Timeout,
}

impl Cache {
    /// Takes the lock `name`, waiting up to `max_wait` for the holder to release or expire, in a
    /// `lock.wait` span that records how the acquisition ended.
    pub async fn acquire_lock(
        &self,
        ns: &Namespace,
        name: &str,
        ttl: Duration,
        max_wait: Duration,
    ) -> Result<LockAcquire, CoreError> {
        let span = tracing::info_span!(
            "lock.wait",
            otel.name = "lock wait",
            tiercache.namespace = %ns.name,
            tiercache.wait.outcome = tracing::field::Empty,
        );
        let r = self
            .acquire_lock_waiting(ns, name, ttl, max_wait)
            .instrument(span.clone())
            .await;
        span.record(
            "tiercache.wait.outcome",
            match &r {
                Ok(LockAcquire::Acquired { .. }) => "acquired",
                Ok(LockAcquire::Timeout) => "timeout",
                Err(CoreError::Draining) => "draining",
                Err(_) => "error",
            },
        );
        r
    }

    /// Waits in the lock's flight on this replica: one waiter at a time is the poller (it tries
    /// the lock on a release wake-up, or every [`LOCK_POLL`] for a holder that expires without
    /// one); the others queue behind it and the next takes over when it leaves. So N waiters on
    /// one lock cost one Redis call per poll interval, not N.
    async fn acquire_lock_waiting(
        &self,
        ns: &Namespace,
        name: &str,
        ttl: Duration,
        max_wait: Duration,
    ) -> Result<LockAcquire, CoreError> {
        let ttl = ns.policy.effective_lock_ttl(ttl);
        let deadline = Instant::now() + max_wait.min(ns.policy.max_wait_max);
        let token = new_token();
        let joined = self.inner.lock_flights.join(&ns.name, name);
        let flight = &joined.flight;
        let mut poller = None;
        loop {
            if poller.is_none() {
                tokio::select! {
                    biased;
                    guard = flight.checking.lock() => poller = Some(guard),
                    _ = tokio::time::sleep_until(deadline) => return Ok(LockAcquire::Timeout),
                }
            }
            let woken = flight.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let remaining = match self.try_lock(ns, name, &token, ttl).await? {
                Ok(fence) => {
                    return Ok(LockAcquire::Acquired {
                        owner_token: token,
                        fencing_token: fence,
                    })
                }
                Err(remaining) => remaining,
            };
            if Instant::now() >= deadline {
                return Ok(LockAcquire::Timeout);
            }
            if self.inner.lock_flights.is_draining() {
                return Err(CoreError::Draining);
            }
            let poll = LOCK_POLL.min(remaining.max(Duration::from_millis(1)));
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(poll) => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    async fn try_lock(
        &self,
        ns: &Namespace,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Result<u64, Duration>, CoreError> {
        self.usable_store()?
            .try_lock(ns, name, token, ttl)
            .await
            .inspect_err(|e| self.trip(e))
    }

    /// Extends the lock held by `owner_token`; false (and no change) when it is not held.
    pub async fn renew_lock(
        &self,
        ns: &Namespace,
        name: &str,
        owner_token: &str,
        ttl: Duration,
    ) -> Result<bool, CoreError> {
        let ttl = ns.policy.effective_lock_ttl(ttl);
        self.usable_store()?
            .renew_lock(ns, name, owner_token, ttl)
            .await
            .inspect_err(|e| self.trip(e))
    }

    /// Frees the lock held by `owner_token`; false (and no change) when it is not held, so a late
    /// release after expiry frees nothing.
    pub async fn release_lock(
        &self,
        ns: &Namespace,
        name: &str,
        owner_token: &str,
    ) -> Result<bool, CoreError> {
        let released = self
            .usable_store()?
            .release_lock(ns, name, owner_token)
            .await
            .inspect_err(|e| self.trip(e))?;
        if released {
            self.inner.lock_flights.wake(&ns.name, name);
        }
        Ok(released)
    }
}
