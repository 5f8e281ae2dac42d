//! The tiercache engine. No gRPC in here: the server crate translates.
//!
//! # Components
//! - [`policy`]: namespace names and per-namespace policy (TTLs, budget, limits).
//! - [`keys`]: the injective, cluster-shaped Redis key layout.
//! - [`codec`]: the entry codec (starts with a format byte).
//! - [`l1`]: the server-wide L1 (one moka cache bounded in bytes) that every namespace shares.
//! - [`namespace`]: a namespace on one replica: its view of L1, cached
//!   invalidation marks, counters and event fan-out.
//! - [`store`]: the authoritative tier behind L1, one interface: the local store (memory-only
//!   mode) and the Redis store with its Lua scripts.
//! - [`types`]: configuration, lookups, writes and their outcomes.
//! - [`event`]: invalidation events and their wire form.
//! - [`engine`]: [`Cache`], the read/write paths and the event bus that keeps L1s coherent.
//! - [`lease`]: GetOrSet, Fill and ReleaseLease: fleet-wide stampede control with coalesced
//!   waiters, stale-while-revalidate and negative caching.
//! - [`lock`]: distributed locks with owner and fencing tokens.
//! - [`inspect`]: [`Cache::inspect`], what each tier holds for a key and why it is (not) visible.
//! - [`watch`]: [`Cache::watch`], a namespace's events in order, with gaps reported.

mod bus;
mod coalesce;
pub mod codec;
mod degraded;
pub mod engine;
pub mod error;
pub mod event;
pub mod inspect;
pub mod keys;
pub mod l1;
pub mod lease;
pub mod lock;
pub mod namespace;
pub mod policy;
mod read;
pub mod store;
pub mod types;
pub mod watch;
mod write;

pub use engine::Cache;
pub use error::{CoreError, RedisErrorClass, RedisReplyError};
pub use event::{Event, EventKind};
pub use inspect::{Inspection, TierInspection, Visibility};
pub use lease::{FillArgs, FillOutcome, GetOrSetOptions, GetOrSetResult, Lease};
pub use lock::LockAcquire;
pub use namespace::Namespace;
pub use policy::NamespacePolicy;
pub use store::redis::{RedisOptions, RedisTls, Secret};
pub use types::{
    CacheConfig, DeleteOutcome, Found, Lookup, Mode, ReadOptions, SetOutcome, Tier, WriteArgs,
    WriteCondition,
};
pub use watch::Watch;
