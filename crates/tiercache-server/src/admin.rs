//! `AdminService` (ListNamespaces, GetStats, Inspect) and `LockService` (the latter answers
//! UNIMPLEMENTED until locks land).

use std::sync::atomic::Ordering;

use tiercache_core::{Cache, Inspection, Mode, NamespacePolicy, Tier, TierInspection, Visibility};
use tiercache_proto::v1 as pb;
use tiercache_proto::v1::admin_service_server::AdminService;
use tiercache_proto::v1::lock_service_server::LockService;
use tonic::{Request, Response, Status};

use crate::cache::{duration_pb, entry_pb};
use crate::error::ApiError;
use crate::validate::{self, Violations};

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    cache: Cache,
}

impl AdminApi {
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }
}

/// Converts a policy for the wire.
pub fn policy_pb(p: &NamespacePolicy) -> pb::NamespacePolicy {
    pb::NamespacePolicy {
        default_ttl: Some(duration_pb(p.default_ttl)),
        max_ttl: Some(duration_pb(p.max_ttl)),
        stale_ttl: Some(duration_pb(p.stale_ttl)),
        negative_ttl: Some(duration_pb(p.negative_ttl)),
        jitter: p.jitter,
        l1_max_bytes: p.l1_max_bytes,
        l1_max_ttl: Some(duration_pb(p.l1_max_ttl)),
        max_value_bytes: p.max_value_bytes as u64,
        lease_ttl: Some(duration_pb(p.lease_ttl)),
        max_wait: Some(duration_pb(p.max_wait)),
        l1_enabled: p.l1_enabled,
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_namespaces(
        &self,
        _r: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: self
                .cache
                .namespaces()
                .iter()
                .map(|ns| pb::NamespaceInfo {
                    name: ns.name.to_string(),
                    policy: Some(policy_pb(&ns.policy)),
                    dynamic: ns.dynamic,
                })
                .collect(),
        }))
    }

    async fn get_stats(
        &self,
        r: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let req = r.into_inner();
        let namespaces = if req.namespace.is_empty() {
            self.cache.namespaces()
        } else {
            validate::namespace("namespace", &req.namespace)?;
            vec![self
                .cache
                .namespace(&req.namespace)
                .map_err(ApiError::from)?]
        };
        let stats = namespaces
            .iter()
            .map(|ns| {
                let s = &ns.stats;
                let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
                let (entries, bytes) = ns.l1_usage();
                pb::NamespaceStats {
                    namespace: ns.name.to_string(),
                    hits_l1: get(&s.hits_l1),
                    hits_l2: get(&s.hits_l2),
                    stale_hits_l1: get(&s.stale_hits_l1),
                    stale_hits_l2: get(&s.stale_hits_l2),
                    misses: get(&s.misses),
                    sets: get(&s.sets),
                    deletes: get(&s.deletes),
                    fills: get(&s.fills),
                    leases_granted: get(&s.leases_granted),
                    lease_waits: get(&s.lease_waits),
                    coalesced: get(&s.coalesced),
                    invalidations: get(&s.invalidations),
                    l1_evictions: get(&s.l1_evictions),
                    l1_entries: entries,
                    l1_bytes: bytes,
                    l1_budget_bytes: ns.policy.l1_max_bytes,
                    l1_clears: get(&s.l1_clears),
                }
            })
            .collect();
        Ok(Response::new(pb::GetStatsResponse {
            namespaces: stats,
            mode: match self.cache.mode() {
                Mode::MemoryOnly => pb::StorageMode::Memory,
                Mode::TwoTier => pb::StorageMode::TwoTier,
            } as i32,
            degraded: self.cache.degraded(),
        }))
    }

    async fn inspect(
        &self,
        r: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let req = r.into_inner();
        validate::namespace("namespace", &req.namespace)?;
        let ns = self
            .cache
            .namespace(&req.namespace)
            .map_err(ApiError::from)?;
        let mut v = Violations::default();
        validate::key(&mut v, "key", &req.key, &ns.policy);
        v.finish()?;
        let inspection = self
            .cache
            .inspect(&ns, &req.key)
            .await
            .map_err(ApiError::from)?;
        let lease = self
            .cache
            .lease_info(&ns, &req.key)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(inspect_pb(inspection, lease)))
    }
}

/// Converts an inspection for the wire. The entry is shown without its value: Inspect explains
/// state, it is not a read.
fn inspect_pb(i: Inspection, lease: Option<(u64, std::time::Duration)>) -> pb::InspectResponse {
    let mut explanation = i.explanation;
    if let Some((born, remaining)) = lease {
        explanation.push_str(&format!(
            " A lease granted at sequence {born} is outstanding ({} ms left): a caller is computing the value.",
            remaining.as_millis()
        ));
    }
    pb::InspectResponse {
        tiers: i.tiers.into_iter().map(tier_view_pb).collect(),
        sequence: i.sequence,
        flush_mark: i.flush_mark,
        lease_held: lease.is_some(),
        lease_remaining: lease.map(|(_, remaining)| duration_pb(remaining)),
        lease_born: lease.map(|(born, _)| born).unwrap_or(0),
        explanation,
    }
}

fn tier_view_pb(t: TierInspection) -> pb::TierView {
    pb::TierView {
        tier: match t.tier {
            Tier::L1 => pb::Tier::L1,
            Tier::L2 => pb::Tier::L2,
        } as i32,
        present: t.entry.is_some(),
        entry: t.entry.map(|f| entry_pb(f, false)),
        visibility: visibility_pb(&t.visibility) as i32,
        tag_marks: t
            .tag_marks
            .into_iter()
            .map(|(tag, mark)| pb::TagMark { tag, mark })
            .collect(),
    }
}

/// Converts a visibility verdict for the wire.
pub fn visibility_pb(v: &Visibility) -> pb::Visibility {
    match v {
        Visibility::Fresh => pb::Visibility::Fresh,
        Visibility::Stale => pb::Visibility::Stale,
        Visibility::Absent => pb::Visibility::Absent,
        Visibility::HiddenByFlush { .. } => pb::Visibility::HiddenByFlush,
        Visibility::HiddenByTag { .. } => pb::Visibility::HiddenByTag,
    }
}

/// The LockService implementation.
#[derive(Clone)]
pub struct LockApi {
    cache: Cache,
}

impl LockApi {
    pub fn new(cache: Cache) -> Self {
        Self { cache }
    }

    fn namespace_and_name(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<std::sync::Arc<tiercache_core::Namespace>, ApiError> {
        validate::namespace("namespace", namespace)?;
        let ns = self.cache.namespace(namespace)?;
        let mut v = validate::Violations::default();
        validate::key(&mut v, "name", name, &ns.policy);
        v.finish()?;
        Ok(ns)
    }
}

fn ownership(held: bool) -> i32 {
    if held {
        pb::LockOwnershipOutcome::Ok as i32
    } else {
        pb::LockOwnershipOutcome::NotHeld as i32
    }
}

fn required_ttl(
    v: &mut validate::Violations,
    ttl: Option<&prost_types::Duration>,
) -> std::time::Duration {
    match validate::duration(v, "ttl", ttl, true) {
        Some(t) => t,
        None => {
            if ttl.is_none() {
                v.add("ttl", "must be set");
            }
            std::time::Duration::ZERO
        }
    }
}

#[tonic::async_trait]
impl LockService for LockApi {
    async fn acquire_lock(
        &self,
        r: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        let deadline = crate::cache::grpc_timeout(r.metadata());
        let req = r.into_inner();
        let ns = self.namespace_and_name(&req.namespace, &req.name)?;
        let mut v = validate::Violations::default();
        let ttl = required_ttl(&mut v, req.ttl.as_ref());
        let max_wait = validate::duration(&mut v, "max_wait", req.max_wait.as_ref(), false)
            .unwrap_or_default();
        v.finish()?;
        let max_wait = crate::cache::within_deadline(max_wait, deadline);
        let got = self
            .cache
            .acquire_lock(&ns, &req.name, ttl, max_wait)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(match got {
            tiercache_core::LockAcquire::Acquired {
                owner_token,
                fencing_token,
            } => pb::AcquireLockResponse {
                outcome: pb::AcquireLockOutcome::Acquired as i32,
                owner_token,
                fencing_token,
                ttl: Some(duration_pb(ttl)),
            },
            tiercache_core::LockAcquire::Timeout => pb::AcquireLockResponse {
                outcome: pb::AcquireLockOutcome::Timeout as i32,
                ..Default::default()
            },
        }))
    }

    async fn renew_lock(
        &self,
        r: Request<pb::RenewLockRequest>,
    ) -> Result<Response<pb::RenewLockResponse>, Status> {
        let req = r.into_inner();
        let ns = self.namespace_and_name(&req.namespace, &req.name)?;
        let mut v = validate::Violations::default();
        let ttl = required_ttl(&mut v, req.ttl.as_ref());
        if req.owner_token.is_empty() {
            v.add("owner_token", "must not be empty");
        }
        v.finish()?;
        let held = self
            .cache
            .renew_lock(&ns, &req.name, &req.owner_token, ttl)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RenewLockResponse {
            outcome: ownership(held),
        }))
    }

    async fn release_lock(
        &self,
        r: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let req = r.into_inner();
        let ns = self.namespace_and_name(&req.namespace, &req.name)?;
        if req.owner_token.is_empty() {
            return Err(ApiError::field("owner_token", "must not be empty").into());
        }
        let held = self
            .cache
            .release_lock(&ns, &req.name, &req.owner_token)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ReleaseLockResponse {
            outcome: ownership(held),
        }))
    }
}
