//! `LockService`: distributed locks with fencing tokens, translated to engine calls.

use std::sync::Arc;
use std::time::Duration;

use crate::services::lock_service_server::LockService;
use tiercache_core::Cache;
use tiercache_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{Access, Guard, Right};
use crate::convert;
use crate::error::ApiError;
use crate::request::{self, grpc_timeout, within_deadline, Resolved};
use crate::validate::{self, Violations};

/// The LockService implementation.
#[derive(Clone)]
pub struct LockApi {
    cache: Cache,
    guard: Arc<Guard>,
}

impl LockApi {
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            guard: Arc::new(Guard::open()),
        }
    }

    /// Checks the `lock` right and rate limits with `guard`.
    pub fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = guard;
        self
    }

    /// Resolves the namespace and checks the lock name against its key rules; the caller opens
    /// the namespace once the rest of the request is valid.
    fn namespace_and_name(
        &self,
        a: &Access,
        v: &mut Violations,
        namespace: &str,
        name: &str,
    ) -> Result<Resolved, ApiError> {
        let ns = request::namespace(&self.cache, a, namespace, Right::Lock)?;
        validate::key(v, "name", name, &ns.policy);
        Ok(ns)
    }
}

fn required_ttl(v: &mut Violations, ttl: Option<&prost_types::Duration>) -> Duration {
    match validate::duration(v, "ttl", ttl, true) {
        Some(t) => t,
        None => {
            if ttl.is_none() {
                v.add("ttl", "must be set");
            }
            Duration::ZERO
        }
    }
}

#[tonic::async_trait]
impl LockService for LockApi {
    async fn acquire_lock(
        &self,
        r: Request<pb::AcquireLockRequest>,
    ) -> Result<Response<pb::AcquireLockResponse>, Status> {
        let deadline = grpc_timeout(r.metadata());
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let mut v = Violations::default();
        let ns = self.namespace_and_name(&a, &mut v, &req.namespace, &req.name)?;
        let ttl = required_ttl(&mut v, req.ttl.as_ref());
        let max_wait = validate::duration(&mut v, "max_wait", req.max_wait.as_ref(), false)
            .unwrap_or_default();
        v.finish()?;
        let ns = ns.open()?;
        // Longer requests than the namespace allows get its caps; the reply says what was used.
        let ttl = ns.policy.effective_lock_ttl(ttl);
        let max_wait = within_deadline(max_wait.min(ns.policy.max_wait_max), deadline);
        let got = self
            .cache
            .acquire_lock(&ns, &req.name, ttl, max_wait)
            .await
            .map_err(ApiError::from)?;
        let mut reply = convert::acquire_lock_response(got, ttl);
        reply.max_wait = Some(tiercache_proto::duration::to_proto(max_wait));
        Ok(Response::new(reply))
    }

    async fn renew_lock(
        &self,
        r: Request<pb::RenewLockRequest>,
    ) -> Result<Response<pb::RenewLockResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let mut v = Violations::default();
        let ns = self.namespace_and_name(&a, &mut v, &req.namespace, &req.name)?;
        let ttl = required_ttl(&mut v, req.ttl.as_ref());
        if req.owner_token.is_empty() {
            v.add("owner_token", "must not be empty");
        }
        v.finish()?;
        let ns = ns.open()?;
        let ttl = ns.policy.effective_lock_ttl(ttl);
        let held = self
            .cache
            .renew_lock(&ns, &req.name, &req.owner_token, ttl)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::RenewLockResponse {
            outcome: convert::lock_ownership(held) as i32,
            ttl: held.then(|| tiercache_proto::duration::to_proto(ttl)),
        }))
    }

    async fn release_lock(
        &self,
        r: Request<pb::ReleaseLockRequest>,
    ) -> Result<Response<pb::ReleaseLockResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let mut v = Violations::default();
        let ns = self.namespace_and_name(&a, &mut v, &req.namespace, &req.name)?;
        if req.owner_token.is_empty() {
            v.add("owner_token", "must not be empty");
        }
        v.finish()?;
        let ns = ns.open()?;
        let held = self
            .cache
            .release_lock(&ns, &req.name, &req.owner_token)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::ReleaseLockResponse {
            outcome: convert::lock_ownership(held) as i32,
        }))
    }
}
