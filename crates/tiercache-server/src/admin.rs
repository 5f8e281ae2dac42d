//! `AdminService`: ListNamespaces, GetStats and Inspect.

use crate::services::admin_service_server::AdminService;
use tiercache_core::Cache;
use tiercache_proto::v1 as pb;
use tonic::{Request, Response, Status};

use std::sync::Arc;

use crate::auth::{Access, Guard, Right};
use crate::convert;
use crate::error::ApiError;
use crate::request;
use crate::validate::{self, Violations};

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    cache: Cache,
    guard: Arc<Guard>,
}

impl AdminApi {
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            guard: Arc::new(Guard::open()),
        }
    }

    /// Checks the `admin` right and rate limits with `guard`.
    pub fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = guard;
        self
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_namespaces(
        &self,
        r: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        // Only the namespaces the caller holds some right on: the others' names are not its
        // business.
        let a = Access::of(&self.guard, &r);
        a.admit_principal("")?;
        Ok(Response::new(pb::ListNamespacesResponse {
            namespaces: self
                .cache
                .namespaces()
                .iter()
                .filter(|ns| a.sees(&ns.name))
                .map(|ns| convert::namespace_info(ns))
                .collect(),
        }))
    }

    async fn get_stats(
        &self,
        r: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::GetStatsResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let namespaces = if req.namespace.is_empty() {
            // Every namespace the caller administers.
            a.admit_principal("")?;
            self.cache
                .namespaces()
                .into_iter()
                .filter(|ns| a.allows(Right::Admin, &ns.name))
                .collect()
        } else {
            vec![request::existing_namespace(
                &self.cache,
                &a,
                &req.namespace,
                Right::Admin,
            )?]
        };
        Ok(Response::new(pb::GetStatsResponse {
            namespaces: namespaces
                .iter()
                .map(|ns| convert::namespace_stats(ns))
                .collect(),
            mode: convert::storage_mode(self.cache.mode()) as i32,
            degraded: self.cache.degraded(),
        }))
    }

    async fn inspect(
        &self,
        r: Request<pb::InspectRequest>,
    ) -> Result<Response<pb::InspectResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = request::existing_namespace(&self.cache, &a, &req.namespace, Right::Admin)?;
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
        Ok(Response::new(convert::inspect_response(inspection, lease)))
    }
}
