//! Plain Rust types for entries, options and outcomes, converted from the wire types.

use std::time::Duration;

use bytes::Bytes;
use tiercache_proto::duration::from_proto_saturating;
use tiercache_proto::v1;

/// The store that answered a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The in-process memory tier of the replica that answered.
    L1,
    /// The shared Redis tier.
    L2,
    /// This client's own in-process near cache (L0); see
    /// [`Namespace::with_near_cache`](crate::Namespace::with_near_cache).
    Near,
    /// The server did not say (or named a tier this SDK does not know).
    Unknown,
}

impl Tier {
    /// Returns a short lowercase name: `l1`, `l2`, `near` or `unknown`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::L1 => "l1",
            Tier::L2 => "l2",
            Tier::Near => "near",
            Tier::Unknown => "unknown",
        }
    }
}

impl From<i32> for Tier {
    fn from(v: i32) -> Self {
        match v1::Tier::try_from(v) {
            Ok(v1::Tier::L1) => Tier::L1,
            Ok(v1::Tier::L2) => Tier::L2,
            _ => Tier::Unknown,
        }
    }
}

/// A cached value with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value bytes; empty for [`GetResult::NotModified`] and for negative entries.
    pub value: Bytes,
    /// The entry's version; every write gets a new, larger one.
    pub version: u64,
    /// The tags the entry carries.
    pub tags: Vec<String>,
    /// Time left until the entry turns stale; zero when it is stale already.
    pub fresh_remaining: Duration,
    /// Time left until the entry is gone (the end of its stale window).
    pub stale_remaining: Duration,
    /// Whether the fresh period has ended and the entry is served within its stale window.
    pub stale: bool,
    /// The tier that answered.
    pub tier: Tier,
    /// Whether this is a negative entry: the origin said the value does not exist.
    pub absent: bool,
    /// The namespace sequence the entry was born at.
    pub born: u64,
}

impl From<v1::Entry> for Entry {
    fn from(e: v1::Entry) -> Self {
        Self {
            fresh_remaining: e
                .fresh_remaining
                .as_ref()
                .map(from_proto_saturating)
                .unwrap_or_default(),
            stale_remaining: e
                .stale_remaining
                .as_ref()
                .map(from_proto_saturating)
                .unwrap_or_default(),
            tier: Tier::from(e.tier),
            value: e.value,
            version: e.version,
            tags: e.tags,
            stale: e.stale,
            absent: e.absent,
            born: e.born,
        }
    }
}

/// Options of [`Namespace::get_with`](crate::Namespace::get_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GetOptions {
    /// When the current version equals this, the answer is [`GetResult::NotModified`] without the
    /// value (the ETag idea).
    pub if_version_not: Option<u64>,
    /// Treat a stale entry as a miss.
    pub fresh_only: bool,
}

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GetResult {
    /// A visible entry (maybe stale: see [`Entry::stale`]).
    Hit(Entry),
    /// No visible entry.
    Miss,
    /// The version equals `if_version_not`; the entry carries the metadata but no value.
    NotModified(Entry),
}

impl GetResult {
    /// Returns the entry of a hit, and `None` for a miss or not-modified.
    pub fn into_hit(self) -> Option<Entry> {
        match self {
            GetResult::Hit(e) => Some(e),
            _ => None,
        }
    }
}

/// A write precondition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Write only if no visible entry exists.
    IfAbsent,
    /// Write only if the current visible entry has this version.
    IfVersion(u64),
}

/// Options of [`Namespace::set_with`](crate::Namespace::set_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetOptions {
    /// Fresh period; the namespace's default TTL when `None`, capped by its max TTL.
    pub ttl: Option<Duration>,
    /// Stale window after the fresh period; the namespace's stale TTL when `None`.
    pub stale_ttl: Option<Duration>,
    /// Tags for [`Namespace::invalidate_tags`](crate::Namespace::invalidate_tags).
    pub tags: Vec<String>,
    /// Store only if this holds.
    pub condition: Option<Condition>,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetResult {
    /// The value was stored with this version.
    Stored { version: u64 },
    /// The [`Condition::IfVersion`] did not hold; `current` is the version found (0 when absent).
    VersionMismatch { current: u64 },
    /// The [`Condition::IfAbsent`] did not hold; `current` is the version found.
    Exists { current: u64 },
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    /// A visible entry was removed.
    Deleted,
    /// No visible entry existed.
    NotFound,
    /// The version condition did not hold; `current` is the version found (0 when absent).
    VersionMismatch { current: u64 },
}

/// What a `get_or_set` waiter does when its wait bound passes before another caller's fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnWaitTimeout {
    /// Run the closure without a lease and do not fill (the default).
    #[default]
    Compute,
    /// Fail with [`Error::Unavailable`](crate::Error::Unavailable).
    Unavailable,
}

/// Options of [`Namespace::get_or_set`](crate::Namespace::get_or_set) and
/// [`Namespace::get_or_set_many`](crate::Namespace::get_or_set_many).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GetOrSetOptions {
    /// Fresh period of a filled entry; the namespace's default TTL when `None`.
    pub ttl: Option<Duration>,
    /// Stale window of a filled entry; the namespace's stale TTL when `None`.
    pub stale_ttl: Option<Duration>,
    /// Tags of a filled entry.
    pub tags: Vec<String>,
    /// How long to wait for another caller's fill; the namespace's max wait when `None`. The
    /// call's deadline is the client's request timeout plus this wait (plus 5 s, the server's
    /// default max wait, when `None`), so the wait is not cut short.
    pub max_wait: Option<Duration>,
    /// Return a stale entry at once rather than treat it as a miss (default on).
    pub allow_stale: bool,
    /// With `allow_stale`: refresh a stale entry in the background when no refresh is under way
    /// (default on).
    pub refresh_stale: bool,
    /// What to do when the wait bound passes.
    pub on_wait_timeout: OnWaitTimeout,
    /// How long a lease stays valid; the namespace's lease TTL when `None`.
    pub lease_ttl: Option<Duration>,
}

impl Default for GetOrSetOptions {
    fn default() -> Self {
        Self {
            ttl: None,
            stale_ttl: None,
            tags: Vec::new(),
            max_wait: None,
            allow_stale: true,
            refresh_stale: true,
            on_wait_timeout: OnWaitTimeout::Compute,
            lease_ttl: None,
        }
    }
}

/// One event of a namespace's [`Watch`](crate::Namespace::watch) stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The namespace sequence of the event (consecutive, except across a gap).
    pub sequence: u64,
    /// What happened.
    pub kind: WatchEventKind,
}

/// What a [`WatchEvent`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEventKind {
    /// The first event: the stream is open; `sequence` is the current one.
    Started,
    /// `key` was written (`version` > 0) or deleted (`version` 0).
    KeyChanged { key: String, version: u64 },
    /// Entries carrying any of `tags` were hidden.
    TagsInvalidated { tags: Vec<String> },
    /// The whole namespace was flushed.
    Flushed,
    /// Events after `last_sequence` were lost: drop everything cached for the namespace.
    Gap { last_sequence: u64 },
}

impl WatchEvent {
    /// Converts a wire event; `None` for an event kind this SDK does not know.
    pub(crate) fn from_wire(w: v1::WatchResponse) -> Option<Self> {
        use v1::watch_response::Event as E;
        let kind = match w.event? {
            E::Started(_) => WatchEventKind::Started,
            E::KeyChanged(k) => WatchEventKind::KeyChanged {
                key: k.key,
                version: k.version,
            },
            E::TagsInvalidated(t) => WatchEventKind::TagsInvalidated { tags: t.tags },
            E::NamespaceFlushed(_) => WatchEventKind::Flushed,
            E::Gap(g) => WatchEventKind::Gap {
                last_sequence: g.last_sequence,
            },
        };
        Some(Self {
            sequence: w.sequence,
            kind,
        })
    }
}

/// What [`Namespace::inspect`](crate::Namespace::inspect) found (the wire type).
pub use tiercache_proto::v1::InspectResponse as Inspection;

/// How the server stores entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageMode {
    /// One process, no Redis.
    Memory,
    /// L1 in memory in front of a shared Redis.
    TwoTier,
    /// The server did not say.
    Unknown,
}

/// Server statistics from [`Client::stats`](crate::Client::stats).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    /// How the server stores entries.
    pub mode: StorageMode,
    /// Whether Redis is unreachable and the server runs on its own memory.
    pub degraded: bool,
    /// Counters per namespace since the server started.
    pub namespaces: Vec<NamespaceStats>,
}

/// Counters of one namespace (the wire type: plain named `u64`s).
pub use tiercache_proto::v1::NamespaceStats;

impl From<v1::GetStatsResponse> for Stats {
    fn from(r: v1::GetStatsResponse) -> Self {
        Self {
            mode: match r.mode() {
                v1::StorageMode::Memory => StorageMode::Memory,
                v1::StorageMode::TwoTier => StorageMode::TwoTier,
                v1::StorageMode::Unspecified => StorageMode::Unknown,
            },
            degraded: r.degraded,
            namespaces: r.namespaces,
        }
    }
}

/// A namespace with its effective policy, from [`Client::list_namespaces`](crate::Client::list_namespaces).
#[derive(Debug, Clone, PartialEq)]
pub struct NamespaceInfo {
    pub name: String,
    /// Whether the namespace was created on first use rather than configured.
    pub dynamic: bool,
    pub policy: NamespacePolicy,
}

/// The effective policy of a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct NamespacePolicy {
    pub default_ttl: Duration,
    pub max_ttl: Duration,
    pub stale_ttl: Duration,
    pub negative_ttl: Duration,
    /// Random fraction (0..1) added to every TTL.
    pub jitter: f64,
    /// L1 budget in bytes.
    pub l1_max_bytes: u64,
    /// The longest time L1 may hold an entry when an L2 is configured.
    pub l1_max_ttl: Duration,
    pub max_value_bytes: u64,
    pub lease_ttl: Duration,
    pub max_wait: Duration,
    /// False when L1 is bypassed for this namespace.
    pub l1_enabled: bool,
}

impl From<v1::NamespaceInfo> for NamespaceInfo {
    fn from(n: v1::NamespaceInfo) -> Self {
        let p = n.policy.unwrap_or_default();
        Self {
            name: n.name,
            dynamic: n.dynamic,
            policy: NamespacePolicy {
                default_ttl: p
                    .default_ttl
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                max_ttl: p
                    .max_ttl
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                stale_ttl: p
                    .stale_ttl
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                negative_ttl: p
                    .negative_ttl
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                jitter: p.jitter,
                l1_max_bytes: p.l1_max_bytes,
                l1_max_ttl: p
                    .l1_max_ttl
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                max_value_bytes: p.max_value_bytes,
                lease_ttl: p
                    .lease_ttl
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                max_wait: p
                    .max_wait
                    .as_ref()
                    .map(from_proto_saturating)
                    .unwrap_or_default(),
                l1_enabled: p.l1_enabled,
            },
        }
    }
}

/// The answer of the standard gRPC health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    /// The server takes requests.
    Serving,
    /// The server is up but does not take requests (starting, draining or degraded).
    NotServing,
    /// The server did not say, or named a status this SDK does not know.
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_from_wire() {
        let wire = v1::Entry {
            value: Bytes::from_static(b"v"),
            version: 7,
            tags: vec!["user:1".into()],
            fresh_remaining: Some(prost_types::Duration {
                seconds: 2,
                nanos: 5,
            }),
            stale_remaining: Some(prost_types::Duration {
                seconds: -3,
                nanos: 0,
            }),
            stale: false,
            tier: v1::Tier::L2 as i32,
            absent: false,
            born: 42,
        };
        let e = Entry::from(wire);
        assert_eq!(e.value, Bytes::from_static(b"v"));
        assert_eq!(e.version, 7);
        assert_eq!(e.tags, vec!["user:1".to_string()]);
        assert_eq!(e.fresh_remaining, Duration::new(2, 5));
        assert_eq!(e.stale_remaining, Duration::ZERO);
        assert_eq!(e.tier, Tier::L2);
        assert_eq!(e.born, 42);
    }

    #[test]
    fn unknown_tier_is_unknown() {
        assert_eq!(Tier::from(0), Tier::Unknown);
        assert_eq!(Tier::from(99), Tier::Unknown);
        assert_eq!(Tier::from(1), Tier::L1);
    }
}
