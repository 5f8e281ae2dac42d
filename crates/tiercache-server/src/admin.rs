//! `AdminService`: ListNamespaces, GetStats and Inspect.

use crate::services::admin_service_server::AdminService;
use tiercache_core::Cache;
use tiercache_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::error::ApiError;
use crate::request;
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
                .map(|ns| convert::namespace_info(ns))
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
            vec![request::existing_namespace(&self.cache, &req.namespace)?]
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
        let req = r.into_inner();
        let ns = request::existing_namespace(&self.cache, &req.namespace)?;
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
