//! The engine's plain types: configuration, lookups, writes and their outcomes.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use crate::codec::EntryData;
use crate::namespace::L1Entry;
use crate::policy::NamespacePolicy;

/// The engine's configuration.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Namespaces that exist from the start, with their policies.
    pub namespaces: Vec<(String, NamespacePolicy)>,
    /// Whether unknown namespaces are created on first use with `default_policy`.
    pub dynamic_namespaces: bool,
    pub default_policy: NamespacePolicy,
    /// The most namespaces created on first use; past it, unknown names are refused
    /// (RESOURCE_EXHAUSTED). Configured namespaces do not count.
    pub max_namespaces: usize,
    /// The L1 byte budget every namespace shares (`l1.max_bytes`).
    pub l1_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            dynamic_namespaces: false,
            default_policy: NamespacePolicy::default(),
            max_namespaces: crate::engine::DEFAULT_MAX_NAMESPACES,
            l1_max_bytes: crate::l1::DEFAULT_L1_MAX_BYTES,
        }
    }
}

/// The tier that answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    L1,
    L2,
}

/// A visible entry and its remaining lifetime.
#[derive(Debug, Clone)]
pub struct Found {
    pub data: EntryData,
    pub fresh_remaining: Duration,
    pub stale_remaining: Duration,
    pub stale: bool,
    pub tier: Tier,
}

/// The result of a lookup.
#[derive(Debug, Clone)]
pub enum Lookup {
    Hit(Found),
    Miss,
}

/// Options of a read.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadOptions {
    /// Treat a stale entry as a miss.
    pub fresh_only: bool,
}

/// A write of one entry.
#[derive(Debug, Clone, Default)]
pub struct WriteArgs {
    pub value: Bytes,
    /// Fresh period; the namespace default when `None`. Capped by the namespace max TTL.
    pub ttl: Option<Duration>,
    /// Stale window; the namespace default when `None`.
    pub stale_ttl: Option<Duration>,
    pub tags: Vec<String>,
    pub condition: WriteCondition,
}

/// The condition of a write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WriteCondition {
    #[default]
    None,
    IfAbsent,
    IfVersion(u64),
}

/// What a Set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Stored { version: u64 },
    VersionMismatch { current: u64 },
    Exists { current: u64 },
}

/// What a Delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    Deleted,
    NotFound,
    VersionMismatch { current: u64 },
}

/// How the engine stores entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    MemoryOnly,
    TwoTier,
}

impl Found {
    /// The entry as L1 holds it, with its remaining lifetime at `now`.
    pub(crate) fn of(e: &L1Entry, now: Instant, tier: Tier) -> Found {
        Found {
            data: e.data.clone(),
            fresh_remaining: e.fresh_until.saturating_duration_since(now),
            stale_remaining: e.stale_until.saturating_duration_since(now),
            stale: now >= e.fresh_until,
            tier,
        }
    }
}
