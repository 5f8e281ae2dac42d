//! The authoritative tier behind L1, one interface with two implementations:
//!
//! - [`local::LocalStore`]: memory-only mode. L1 *is* the store; sequences, marks, leases and
//!   locks live in the namespace state, serialized per key stripe.
//! - [`redis::RedisStore`]: Redis and its Lua scripts ([`scripts`]), shared by every replica.
//!
//! Both answer with the same outcome types. [`Store`] dispatches by enum on the hot path (no boxed
//! futures). Each rule lives once per store: "a Set revokes the lease" is in the Set script for
//! Redis and in [`local::LocalStore::set`] for memory-only mode. The engine above keeps L1,
//! coherence, coalescing and the one fallback rule (degraded mode); it never asks which store it
//! has except where L1 itself is the store.

use std::time::Duration;

use crate::codec::{self, EntryData};
use crate::error::CoreError;
use crate::namespace::Namespace;
use crate::types::WriteCondition;

mod calls;
pub mod local;
mod outcome;
pub mod redis;
mod scripts;

pub use local::LocalStore;
pub use outcome::{LeaseGrant, StoreDelete, StoreFill, StoreSet, StoredEntry};
pub use redis::RedisStore;

/// The authoritative tier of one engine.
// One per engine, inside its `Arc`: boxing the large variant would only add an indirection to
// every call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Store {
    Local(LocalStore),
    Redis(RedisStore),
}

impl Store {
    /// The Redis store, when that is the tier.
    pub fn redis(&self) -> Option<&RedisStore> {
        match self {
            Store::Local(_) => None,
            Store::Redis(r) => Some(r),
        }
    }

    /// Writes an entry (`data`'s version and born are assigned by the store) for `ttl` plus its
    /// stale window, if `condition` holds; revokes the key's lease.
    pub async fn set(
        &self,
        ns: &Namespace,
        key: &str,
        data: &EntryData,
        ttl: Duration,
        condition: WriteCondition,
    ) -> Result<StoreSet, CoreError> {
        match self {
            Store::Local(l) => l.set(ns, key, data, ttl, condition),
            Store::Redis(r) => {
                let blob = codec::encode(data);
                r.set(
                    &ns.keys,
                    key,
                    blob,
                    &data.tags,
                    ttl + data.stale_window,
                    condition,
                )
                .await
            }
        }
    }

    /// Deletes an entry (optionally only at a version) and revokes its lease.
    pub async fn delete(
        &self,
        ns: &Namespace,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StoreDelete, CoreError> {
        match self {
            Store::Local(l) => l.delete(ns, key, if_version),
            Store::Redis(r) => r.delete(&ns.keys, key, if_version).await,
        }
    }

    /// Asks for the lease on a key; `token` holds it if granted.
    pub async fn acquire_lease(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, CoreError> {
        match self {
            Store::Local(l) => Ok(l.acquire_lease(ns, key, token, ttl)),
            Store::Redis(r) => r.acquire_lease(&ns.keys, key, token, ttl).await,
        }
    }

    /// Stores a value computed under the lease `token` for `ttl` plus its stale window.
    pub async fn fill(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
        data: &EntryData,
        ttl: Duration,
    ) -> Result<StoreFill, CoreError> {
        match self {
            Store::Local(l) => l.fill(ns, key, token, data, ttl),
            Store::Redis(r) => {
                let blob = codec::encode(data);
                r.fill(
                    &ns.keys,
                    key,
                    token,
                    blob,
                    &data.tags,
                    ttl + data.stale_window,
                )
                .await
            }
        }
    }

    /// Gives a lease back; returns whether `token` held it.
    pub async fn release_lease(
        &self,
        ns: &Namespace,
        key: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        match self {
            Store::Local(l) => Ok(l.release_lease(ns, key, token)),
            Store::Redis(r) => r.release_lease(&ns.keys, key, token).await,
        }
    }

    /// The lease held on `key`: `(born, remaining)`.
    pub async fn lease_info(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<(u64, Duration)>, CoreError> {
        match self {
            Store::Local(l) => Ok(l.lease_info(ns, key)),
            Store::Redis(r) => Ok(r
                .lease_info(&ns.keys, key)
                .await?
                .filter(|(token, _, _)| !token.is_empty())
                .map(|(_, born, remaining)| (born, remaining))),
        }
    }

    /// Tries to take a lock once: `Ok(Ok(fence))` acquired, `Ok(Err(remaining))` held.
    pub async fn try_lock(
        &self,
        ns: &Namespace,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Result<u64, Duration>, CoreError> {
        match self {
            Store::Local(l) => Ok(l.try_lock(ns, name, token, ttl)),
            Store::Redis(r) => r.acquire_lock(&ns.keys, name, token, ttl).await,
        }
    }

    /// Extends a lock held by `token`; returns whether it was held.
    pub async fn renew_lock(
        &self,
        ns: &Namespace,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, CoreError> {
        match self {
            Store::Local(l) => Ok(l.renew_lock(ns, name, token, ttl)),
            Store::Redis(r) => r.renew_lock(&ns.keys, name, token, ttl).await,
        }
    }

    /// Frees a lock held by `token`; returns whether it was held.
    pub async fn release_lock(
        &self,
        ns: &Namespace,
        name: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        match self {
            Store::Local(l) => Ok(l.release_lock(ns, name, token)),
            Store::Redis(r) => r.release_lock(&ns.keys, name, token).await,
        }
    }

    /// Takes a new sequence and marks every tag with it; returns the sequence.
    pub async fn invalidate_tags(&self, ns: &Namespace, tags: &[String]) -> Result<u64, CoreError> {
        match self {
            Store::Local(l) => Ok(l.invalidate_tags(ns, tags)),
            Store::Redis(r) => {
                r.invalidate_tags(
                    &ns.keys,
                    tags,
                    ns.policy.mark_lifetime(),
                    ns.policy.lease_ttl_max,
                )
                .await
            }
        }
    }

    /// Takes a new sequence and sets the namespace flush mark to it; returns the sequence.
    pub async fn flush(&self, ns: &Namespace) -> Result<u64, CoreError> {
        match self {
            Store::Local(l) => Ok(l.flush(ns)),
            Store::Redis(r) => r.flush(&ns.keys).await,
        }
    }
}
