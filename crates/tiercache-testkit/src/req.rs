//! Requests of the gRPC API with the fields tests leave alone at their defaults.
//!
//! Each builder fills the namespace `default` and the key (and value, token, tags where the
//! request needs them); set anything else with struct update syntax, and another namespace with
//! [`InNamespace::in_namespace`]:
//!
//! ```
//! use tiercache_testkit::req::{self, InNamespace};
//! use tiercache_testkit::pb;
//!
//! let r = pb::SetRequest {
//!     tags: req::tags(&["team:7"]),
//!     ..req::set("user:42", "ada").in_namespace("users")
//! };
//! assert_eq!((r.namespace.as_str(), r.tags.len()), ("users", 1));
//! ```

use std::time::Duration;

use bytes::Bytes;
use tiercache_proto::v1 as pb;

/// The namespace every builder uses, the one a default config serves.
pub const NAMESPACE: &str = "default";

/// Returns a Get of `key`.
pub fn get(key: &str) -> pb::GetRequest {
    pb::GetRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        ..Default::default()
    }
}

/// Returns a Set of `key` to `value`, with the namespace's default TTLs, no tags, no condition.
pub fn set(key: &str, value: &str) -> pb::SetRequest {
    pb::SetRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        value: Bytes::from(value.to_owned()),
        ..Default::default()
    }
}

/// Returns an unconditional Delete of `key`.
pub fn delete(key: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        if_version: None,
    }
}

/// Returns a GetOrSet of `key` with the namespace's policy (wait bound, lease TTL).
pub fn get_or_set(key: &str) -> pb::GetOrSetRequest {
    pb::GetOrSetRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        ..Default::default()
    }
}

/// Returns a Fill of `key` with `value` under the lease `token`.
pub fn fill(key: &str, token: &str, value: &str) -> pb::FillRequest {
    pb::FillRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        lease_token: token.into(),
        value: Bytes::from(value.to_owned()),
        ..Default::default()
    }
}

/// Returns a ReleaseLease of `key`'s lease `token`.
pub fn release_lease(key: &str, token: &str) -> pb::ReleaseLeaseRequest {
    pb::ReleaseLeaseRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
        lease_token: token.into(),
    }
}

/// Returns an InvalidateTags of `tags`.
pub fn invalidate_tags(tags: &[&str]) -> pb::InvalidateTagsRequest {
    pb::InvalidateTagsRequest {
        namespace: NAMESPACE.into(),
        tags: self::tags(tags),
    }
}

/// Returns a FlushNamespace.
pub fn flush() -> pb::FlushNamespaceRequest {
    pb::FlushNamespaceRequest {
        namespace: NAMESPACE.into(),
    }
}

/// Returns a GetStats of the namespace.
pub fn stats() -> pb::GetStatsRequest {
    pb::GetStatsRequest {
        namespace: NAMESPACE.into(),
    }
}

/// Returns an Inspect of `key`.
pub fn inspect(key: &str) -> pb::InspectRequest {
    pb::InspectRequest {
        namespace: NAMESPACE.into(),
        key: key.into(),
    }
}

/// Returns an AcquireLock of the lock `name` for `ttl`, waiting at most `max_wait`.
pub fn acquire_lock(name: &str, ttl: Duration, max_wait: Duration) -> pb::AcquireLockRequest {
    pb::AcquireLockRequest {
        namespace: NAMESPACE.into(),
        name: name.into(),
        ttl: duration(ttl),
        max_wait: duration(max_wait),
    }
}

/// Returns a RenewLock of the lock `name`, held as `owner_token`, for another `ttl`.
pub fn renew_lock(name: &str, owner_token: &str, ttl: Duration) -> pb::RenewLockRequest {
    pb::RenewLockRequest {
        namespace: NAMESPACE.into(),
        name: name.into(),
        owner_token: owner_token.into(),
        ttl: duration(ttl),
    }
}

/// Returns a ReleaseLock of the lock `name`, held as `owner_token`.
pub fn release_lock(name: &str, owner_token: &str) -> pb::ReleaseLockRequest {
    pb::ReleaseLockRequest {
        namespace: NAMESPACE.into(),
        name: name.into(),
        owner_token: owner_token.into(),
    }
}

/// Returns owned tags, for the `tags` field of a request.
pub fn tags(tags: &[&str]) -> Vec<String> {
    tags.iter().map(|t| t.to_string()).collect()
}

/// Returns `d` as the wire's duration, for the TTL and wait fields.
///
/// # Panics
///
/// Panics if `d` is longer than the wire type holds (about 292 billion years).
pub fn duration(d: Duration) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(d).expect("a duration the wire type holds"))
}

/// Moves a request to another namespace.
pub trait InNamespace {
    /// Returns the request with its namespace replaced by `namespace`.
    fn in_namespace(self, namespace: &str) -> Self;
}

macro_rules! in_namespace {
    ($($request:ty),* $(,)?) => {
        $(impl InNamespace for $request {
            fn in_namespace(mut self, namespace: &str) -> Self {
                self.namespace = namespace.into();
                self
            }
        })*
    };
}

in_namespace!(
    pb::GetRequest,
    pb::SetRequest,
    pb::DeleteRequest,
    pb::GetOrSetRequest,
    pb::FillRequest,
    pb::ReleaseLeaseRequest,
    pb::InvalidateTagsRequest,
    pb::FlushNamespaceRequest,
    pb::GetStatsRequest,
    pb::InspectRequest,
    pb::AcquireLockRequest,
    pb::RenewLockRequest,
    pb::ReleaseLockRequest,
);
