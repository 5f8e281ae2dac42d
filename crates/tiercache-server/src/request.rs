//! What every service does first with a request: resolve the namespace it names (checking the
//! caller's right on it and its rate limits), and read the caller's deadline.

use std::sync::Arc;
use std::time::Duration;

use tiercache_core::{Cache, Namespace, NamespacePolicy};

use crate::auth::{Access, Right};
use crate::error::ApiError;
use crate::telemetry;
use crate::validate;

/// A namespace a request names, resolved before the request is validated: the namespace if it
/// exists, else the policy a dynamic one would get. Only [`Resolved::open`], called once the
/// whole request is valid, creates a namespace, so an invalid request creates nothing.
pub struct Resolved {
    cache: Cache,
    name: String,
    /// The policy to validate the request against.
    pub policy: NamespacePolicy,
    existing: Option<Arc<Namespace>>,
    access: Access,
}

impl Resolved {
    /// The namespace, created now if it is new (RESOURCE_EXHAUSTED past `max_namespaces`),
    /// once the caller's and the namespace's rate limits admit the call (RESOURCE_EXHAUSTED,
    /// `RATE_LIMITED`).
    pub fn open(self) -> Result<Arc<Namespace>, ApiError> {
        let ns = match self.existing {
            Some(ns) => ns,
            None => {
                let ns = self.cache.namespace(&self.name)?;
                telemetry::note_namespace(&ns.name);
                ns
            }
        };
        self.access.admit(&ns.name)?;
        Ok(ns)
    }

    /// The caller's access (for rights beyond the one checked, like `write` for a lease).
    pub fn access(&self) -> &Access {
        &self.access
    }
}

/// Resolves the namespace a data-plane request names (field `namespace`): checks the name, that
/// the caller holds `right` on it (PERMISSION_DENIED, before anything tells whether it exists),
/// and asks the engine (an unknown name is NOT_FOUND unless dynamic namespaces are on). An
/// existing namespace is recorded on the RPC in flight, so the RPC's span and metrics carry the
/// namespace label; a new one when [`Resolved::open`] creates it. Every data-plane service
/// resolves namespaces here.
pub fn namespace(
    cache: &Cache,
    access: &Access,
    name: &str,
    right: Right,
) -> Result<Resolved, ApiError> {
    validate::namespace("namespace", name)?;
    access.require(right, name)?;
    let (policy, existing) = match cache.policy_for(name)? {
        Ok(ns) => {
            telemetry::note_namespace(&ns.name);
            (ns.policy.clone(), Some(ns))
        }
        Err(policy) => (policy, None),
    };
    Ok(Resolved {
        cache: cache.clone(),
        name: name.to_string(),
        policy,
        existing,
        access: access.clone(),
    })
}

/// Resolves a namespace that must exist already (admin calls: GetStats, Inspect), never
/// creating one: an unknown name is NOT_FOUND. The caller must hold `right` on it.
pub fn existing_namespace(
    cache: &Cache,
    access: &Access,
    name: &str,
    right: Right,
) -> Result<Arc<Namespace>, ApiError> {
    validate::namespace("namespace", name)?;
    access.require(right, name)?;
    let ns = cache.existing_namespace(name)?;
    telemetry::note_namespace(&ns.name);
    access.admit(&ns.name)?;
    Ok(ns)
}

/// The caller's gRPC deadline (`grpc-timeout`), if it sent one.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (num, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Returns how long a wait may last so the answer still reaches the caller before its deadline:
/// the deadline less a margin of a tenth of it, at least 20 ms and at most 500 ms.
pub fn within_deadline(wait: Duration, deadline: Option<Duration>) -> Duration {
    match deadline {
        Some(d) => {
            let margin = (d / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
            wait.min(d.saturating_sub(margin))
        }
        None => wait,
    }
}
