//! GetOrSet, Fill and ReleaseLease: one computation per miss across the whole fleet.
//!
//! On a miss exactly one caller gets a lease (a random token stored beside the entry with the
//! namespace sequence read at grant time, the entry's future `born`). Every other caller of that
//! key joins its replica's [`Flight`](crate::coalesce::Flight): one waiter at a time re-checks,
//! the rest wait for its answer, a wake-up (the fill's event, a release) or the fallback poll, and
//! never past their own bound. When the holder releases or its lease expires, the next check
//! grants the lease to one waiter.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::Instrument;

use crate::codec::EntryData;
use crate::engine::Cache;
use crate::error::CoreError;
use crate::namespace::{bump, Namespace};
use crate::policy::lifetimes;
use crate::read::{count_result, lookup_result};
use crate::store::{LeaseGrant, StoreFill};
use crate::types::{Found, Lookup, ReadOptions};

/// How often a waiter re-checks when no wake-up came (a lost event, an expired lease).
pub const WAITER_POLL: Duration = Duration::from_millis(50);

/// The right to fill one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: String,
    pub ttl: Duration,
    /// True when the lease refreshes a stale entry the caller was also given.
    pub refresh: bool,
}

/// Options of a GetOrSet.
#[derive(Debug, Clone, Copy)]
pub struct GetOrSetOptions {
    /// How long to wait for another caller's fill (already capped by the caller's deadline).
    pub wait: Duration,
    /// Return a stale entry at once instead of treating it as a miss.
    pub allow_stale: bool,
    /// With `allow_stale`: also hand out a refresh lease when no refresh is under way.
    pub refresh_stale: bool,
    /// Lease validity; the namespace's lease TTL when `None`.
    pub lease_ttl: Option<Duration>,
    /// Whether this caller may be granted a lease. When false it still gets hits and waits
    /// for another caller's fill, gets no refresh lease, and where it would be granted the lease
    /// it gets [`CoreError::LeaseRefused`] and nothing is taken.
    pub may_lease: bool,
}

/// What a GetOrSet caller gets.
#[derive(Debug, Clone)]
pub enum GetOrSetResult {
    /// A visible entry (maybe stale), and a refresh lease if one was asked for and granted.
    Hit {
        found: Found,
        refresh: Option<Lease>,
    },
    /// A miss, and this caller holds the lease.
    Lease(Lease),
    /// Another caller filled the key while this one waited.
    Filled(Found),
    /// The wait bound passed.
    WaitTimedOut,
    /// A miss while Redis is unreachable: compute without a lease and do not fill (nothing can
    /// be stored until Redis answers again).
    Compute,
}

/// A value computed under a lease.
#[derive(Debug, Clone, Default)]
pub struct FillArgs {
    pub value: Bytes,
    pub ttl: Option<Duration>,
    pub stale_ttl: Option<Duration>,
    pub tags: Vec<String>,
    /// Store a negative entry with the namespace's negative TTL.
    pub absent: bool,
}

/// What a Fill did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FillOutcome {
    Stored {
        version: u64,
    },
    /// A write or invalidation came in between: nothing was stored.
    LeaseRevoked,
    /// The lease had expired (and maybe passed to another caller): nothing was stored.
    LeaseExpired,
}

enum Acquired {
    Granted(Lease),
    FreshExists,
    Held,
    /// Redis is unreachable: no lease can be granted.
    Degraded,
}

/// Returns a new 128-bit random token, hex encoded.
pub(crate) fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Cache {
    /// Reads a key; on a miss grants this caller the lease or waits for another caller's fill.
    ///
    /// The lookup counts in the namespace statistics once the result is known: a caller served
    /// by another caller's fill counts as `coalesced` (the `filled` result of the lookups metric),
    /// not as the miss it first found, so stampedes do not pull the hit ratio down.
    pub async fn get_or_set(
        &self,
        ns: &Namespace,
        key: &str,
        opts: GetOrSetOptions,
    ) -> Result<GetOrSetResult, CoreError> {
        let first = self
            .lookup_many(ns, &[key], ReadOptions::default(), false, None)
            .await?
            .pop()
            .unwrap_or(Lookup::Miss);
        let result = lookup_result(&first);
        let r = self.get_or_set_after(ns, key, opts, first).await;
        if !matches!(r, Ok(GetOrSetResult::Filled(_))) {
            count_result(ns, result);
        }
        r
    }

    /// [`Cache::get_or_set`] once the first lookup found `first`.
    async fn get_or_set_after(
        &self,
        ns: &Namespace,
        key: &str,
        opts: GetOrSetOptions,
        first: Lookup,
    ) -> Result<GetOrSetResult, CoreError> {
        let deadline = Instant::now() + opts.wait.min(ns.policy.max_wait_max);
        let lease_ttl = ns.policy.effective_lease_ttl(opts.lease_ttl);
        if let Lookup::Hit(found) = first {
            if !found.stale {
                return Ok(GetOrSetResult::Hit {
                    found,
                    refresh: None,
                });
            }
            if opts.allow_stale {
                let refresh = if opts.refresh_stale && opts.may_lease {
                    match self.acquire(ns, key, lease_ttl).await? {
                        Acquired::Granted(lease) => Some(Lease {
                            refresh: true,
                            ..lease
                        }),
                        Acquired::FreshExists | Acquired::Held | Acquired::Degraded => None,
                    }
                } else {
                    None
                };
                return Ok(GetOrSetResult::Hit { found, refresh });
            }
        }
        match self.acquire_if(opts.may_lease, ns, key, lease_ttl).await? {
            Acquired::Granted(lease) => Ok(GetOrSetResult::Lease(lease)),
            Acquired::Degraded if self.claim_compute(ns, key, lease_ttl) => {
                Ok(GetOrSetResult::Compute)
            }
            Acquired::FreshExists | Acquired::Held | Acquired::Degraded => {
                self.wait_for_fill(ns, key, opts, lease_ttl, deadline).await
            }
        }
    }

    /// Waits for another caller's fill in a `lease.wait` span that records how the wait ended.
    async fn wait_for_fill(
        &self,
        ns: &Namespace,
        key: &str,
        opts: GetOrSetOptions,
        lease_ttl: Duration,
        deadline: Instant,
    ) -> Result<GetOrSetResult, CoreError> {
        let span = tracing::info_span!(
            "lease.wait",
            otel.name = "lease wait",
            tiercache.namespace = %ns.name,
            tiercache.wait.outcome = tracing::field::Empty,
        );
        let r = self
            .wait_in_flight(ns, key, opts, lease_ttl, deadline)
            .instrument(span.clone())
            .await;
        span.record(
            "tiercache.wait.outcome",
            match &r {
                Ok(GetOrSetResult::Filled(_)) => "filled",
                Ok(GetOrSetResult::Lease(_)) => "lease",
                Ok(GetOrSetResult::WaitTimedOut) => "timeout",
                Ok(GetOrSetResult::Hit { .. }) => "hit",
                Ok(GetOrSetResult::Compute) => "compute",
                Err(CoreError::Draining) => "draining",
                Err(_) => "error",
            },
        );
        r
    }

    async fn wait_in_flight(
        &self,
        ns: &Namespace,
        key: &str,
        opts: GetOrSetOptions,
        lease_ttl: Duration,
        deadline: Instant,
    ) -> Result<GetOrSetResult, CoreError> {
        bump(&ns.stats.lease_waits);
        let joined = self.inner.flights.join(&ns.name, key);
        let flight = &joined.flight;
        let mut filled = flight.filled.subscribe();
        filled.borrow_and_update();
        let read = ReadOptions {
            fresh_only: !opts.allow_stale,
        };
        loop {
            let woken = flight.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Ok(_checking) = flight.checking.try_lock() {
                let lookup = self.lookup_many(ns, &[key], read, false, None).await?.pop();
                if let Some(Lookup::Hit(found)) = lookup {
                    flight.filled.send_replace(Some(found.clone()));
                    bump(&ns.stats.coalesced);
                    return Ok(GetOrSetResult::Filled(found));
                }
                match self.acquire_if(opts.may_lease, ns, key, lease_ttl).await? {
                    Acquired::Granted(lease) => return Ok(GetOrSetResult::Lease(lease)),
                    Acquired::Degraded if self.claim_compute(ns, key, lease_ttl) => {
                        return Ok(GetOrSetResult::Compute)
                    }
                    Acquired::FreshExists | Acquired::Held | Acquired::Degraded => {}
                }
            }
            if Instant::now() >= deadline {
                return Ok(GetOrSetResult::WaitTimedOut);
            }
            if self.inner.flights.is_draining() {
                return Err(CoreError::Draining);
            }
            tokio::select! {
                _ = &mut woken => {}
                changed = filled.changed() => {
                    if changed.is_ok() {
                        if let Some(found) = filled.borrow_and_update().clone() {
                            bump(&ns.stats.coalesced);
                            return Ok(GetOrSetResult::Filled(found));
                        }
                    }
                }
                _ = tokio::time::sleep(WAITER_POLL) => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(GetOrSetResult::WaitTimedOut),
            }
        }
    }

    /// [`Cache::acquire`] for a caller that may take a lease; for one that may not, only
    /// looks: a lease held by another caller means waiting, none means [`CoreError::LeaseRefused`]
    /// (this caller would have been granted it).
    async fn acquire_if(
        &self,
        may_lease: bool,
        ns: &Namespace,
        key: &str,
        ttl: Duration,
    ) -> Result<Acquired, CoreError> {
        if may_lease {
            return self.acquire(ns, key, ttl).await;
        }
        match self.usable_store() {
            Ok(store) => match store.lease_info(ns, key).await {
                Ok(Some(_)) => Ok(Acquired::Held),
                // A fill may have landed between the caller's lookup and this look (it writes
                // the entry and removes the lease at once): look at the entry again before
                // refusing, as the acquire script does for a caller that may lease.
                Ok(None) => match self
                    .lookup_many(ns, &[key], ReadOptions { fresh_only: true }, false, None)
                    .await?
                    .pop()
                {
                    Some(Lookup::Hit(_)) => Ok(Acquired::FreshExists),
                    _ => Err(CoreError::LeaseRefused),
                },
                Err(e) if e.is_unreachable() => {
                    self.trip(&e);
                    Ok(Acquired::Degraded)
                }
                Err(e) => Err(e),
            },
            Err(e) if e.is_unreachable() => Ok(Acquired::Degraded),
            Err(e) => Err(e),
        }
    }

    async fn acquire(
        &self,
        ns: &Namespace,
        key: &str,
        ttl: Duration,
    ) -> Result<Acquired, CoreError> {
        let token = new_token();
        // The one fallback rule: no lease while Redis is unreachable (`usable_store` refuses).
        let grant = match self.usable_store() {
            Ok(store) => store.acquire_lease(ns, key, &token, ttl).await,
            Err(e) => Err(e),
        };
        let grant = match grant {
            Ok(grant) => grant,
            Err(e) if e.is_unreachable() => {
                self.trip(&e);
                return Ok(Acquired::Degraded);
            }
            Err(e) => return Err(e),
        };
        match grant {
            LeaseGrant::Granted { .. } => {}
            LeaseGrant::FreshEntryExists => return Ok(Acquired::FreshExists),
            LeaseGrant::Held { .. } => return Ok(Acquired::Held),
        }
        bump(&ns.stats.leases_granted);
        Ok(Acquired::Granted(Lease {
            token,
            ttl,
            refresh: false,
        }))
    }

    /// Claims the computation of `key` on this replica while degraded; see [`crate::degraded`].
    fn claim_compute(&self, ns: &Namespace, key: &str, ttl: Duration) -> bool {
        self.inner.compute_claims.claim(&ns.name, key, ttl)
    }

    /// Stores a value computed under the lease `token`.
    pub async fn fill(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
        args: FillArgs,
    ) -> Result<FillOutcome, CoreError> {
        let (ttl, stale) = if args.absent {
            (ns.policy.negative_ttl, Duration::ZERO)
        } else {
            lifetimes(&ns.policy, args.ttl, args.stale_ttl)
        };
        let mut data = EntryData {
            value: if args.absent {
                Bytes::new()
            } else {
                args.value
            },
            version: 0,
            born: 0,
            tags: args.tags.into(),
            absent: args.absent,
            stale_window: stale,
        };
        let store = self.writable(ns, &[key])?;
        let filled = store.fill(ns, key, token, &data, ttl).await;
        let outcome = match self.written(ns, key, filled)? {
            StoreFill::Stored {
                version,
                sequence,
                born,
            } => {
                data.version = version;
                data.born = born;
                self.l1_after_write(ns, key, Some((data, ttl)), sequence);
                FillOutcome::Stored { version }
            }
            StoreFill::Revoked => FillOutcome::LeaseRevoked,
            StoreFill::Expired => FillOutcome::LeaseExpired,
        };
        if matches!(outcome, FillOutcome::Stored { .. }) {
            bump(&ns.stats.fills);
        }
        self.inner.flights.wake(&ns.name, key);
        Ok(outcome)
    }

    /// Gives a lease back without a value (errors are never cached); wakes the waiters so one of
    /// them is granted the next lease. Returns whether `token` held the lease.
    pub async fn release_lease(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        let released = self
            .writable(ns, &[])?
            .release_lease(ns, key, token)
            .await
            .inspect_err(|e| self.trip(e))?;
        if released {
            self.inner.flights.wake(&ns.name, key);
        }
        Ok(released)
    }

    /// Starts draining this replica (it is shutting down): every GetOrSet and lock waiter is
    /// released at once with [`CoreError::Draining`], later ones at their first wait, and
    /// [`Cache::drained`] completes, so the server can end its Watch and Pipeline streams. Reads
    /// and writes go on as usual.
    pub fn drain(&self) {
        self.inner.flights.drain();
        self.inner.lock_flights.drain();
    }

    /// True once [`Cache::drain`] was called.
    pub fn draining(&self) -> bool {
        self.inner.flights.is_draining()
    }

    /// Completes once [`Cache::drain`] was called.
    pub async fn drained(&self) {
        self.inner.flights.drained().await
    }

    /// How many callers wait now: `(GetOrSet waiters, lock waiters)`, over every key.
    pub fn waiters(&self) -> (usize, usize) {
        (
            self.inner.flights.waiters(),
            self.inner.lock_flights.waiters(),
        )
    }

    /// The lease on `key`: `(born, remaining)` when one is held.
    pub async fn lease_info(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<(u64, Duration)>, CoreError> {
        self.usable_store()?
            .lease_info(ns, key)
            .await
            .inspect_err(|e| self.trip(e))
    }
}
