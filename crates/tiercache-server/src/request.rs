//! What every service does first with a request: resolve the namespace it names, and read the
//! caller's deadline.

use std::sync::Arc;
use std::time::Duration;

use tiercache_core::{Cache, Namespace};

use crate::error::ApiError;
use crate::telemetry;
use crate::validate;

/// Resolves the namespace a request names (field `namespace`): checks the name, asks the engine
/// (an unknown name is NOT_FOUND unless dynamic namespaces are on) and records it on the RPC in
/// flight, so the RPC's span and metrics carry the namespace label. Every service resolves
/// namespaces here.
pub fn namespace(cache: &Cache, name: &str) -> Result<Arc<Namespace>, ApiError> {
    validate::namespace("namespace", name)?;
    let ns = cache.namespace(name)?;
    telemetry::note_namespace(&ns.name);
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
