//! `CacheService`: its unary RPCs and Watch translated to engine calls. The Pipeline stream is
//! [`crate::pipeline`], which runs the Get/Set/Delete handlers here.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::services::cache_service_server::CacheService;
use futures::Stream;
use tiercache_core::{
    Cache, CoreError, FillArgs, GetOrSetOptions, GetOrSetResult, Namespace, ReadOptions, WriteArgs,
};
use tiercache_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Access, Guard, Right};
use crate::config::LimitsConfig;
use crate::convert;
use crate::error::ApiError;
use crate::pipeline;
use crate::request::{self, grpc_timeout, within_deadline, Resolved};
use crate::telemetry;
use crate::telemetry::metrics::{StreamKind, Streams};
use crate::validate::{self, Violations};

/// The CacheService implementation.
#[derive(Clone)]
pub struct CacheApi {
    cache: Cache,
    limits: Arc<LimitsConfig>,
    streams: Arc<Streams>,
    guard: Arc<Guard>,
}

impl CacheApi {
    pub fn new(cache: Cache, limits: LimitsConfig) -> Self {
        Self {
            cache,
            limits: Arc::new(limits),
            streams: Arc::default(),
            guard: Arc::new(Guard::open()),
        }
    }

    /// Checks rights and rate limits with `guard` (by default every caller may do everything).
    pub fn with_guard(mut self, guard: Arc<Guard>) -> Self {
        self.guard = guard;
        self
    }

    /// Counts this service's open Watch and Pipeline streams in `streams`.
    pub fn with_streams(mut self, streams: Arc<Streams>) -> Self {
        self.streams = streams;
        self
    }

    /// Resolves the namespace a request names, for a caller who must hold `right` on it;
    /// `open` it once the request is valid.
    fn namespace(&self, a: &Access, name: &str, right: Right) -> Result<Resolved, ApiError> {
        request::namespace(&self.cache, a, name, right)
    }

    async fn get_one(&self, a: &Access, req: pb::GetRequest) -> Result<pb::GetResponse, ApiError> {
        let ns = self.namespace(a, &req.namespace, Right::Read)?;
        let mut v = Violations::default();
        validate::key(&mut v, "key", &req.key, &ns.policy);
        v.finish()?;
        let ns = ns.open()?;
        let opts = ReadOptions {
            fresh_only: req.fresh_only,
        };
        // Sampled before the lookup, so the answer is at least as new as it.
        let applied = self.cache.applied_sequence(&ns);
        let lookup = self.cache.get(&ns, &req.key, opts).await?;
        telemetry::note_lookup(&lookup);
        Ok(convert::get_response(lookup, req.if_version_not, applied))
    }

    async fn set_one(
        &self,
        a: &Access,
        req: pb::SetRequest,
        prefix: &str,
    ) -> Result<pb::SetResponse, ApiError> {
        let checked = self.check_set(a, &req, prefix)?.open()?;
        self.apply_set(checked, req).await
    }

    /// Checks the size of a batch that has no other request-level fields.
    fn check_batch(&self, field: &str, len: usize) -> Result<(), ApiError> {
        let mut v = Violations::default();
        validate::batch(&mut v, field, len, self.limits.max_batch);
        v.finish()
    }

    /// Validates a Set, naming fields with `prefix` (`requests[2].` in a batch).
    fn check_set(
        &self,
        a: &Access,
        req: &pb::SetRequest,
        prefix: &str,
    ) -> Result<CheckedSet, ApiError> {
        let ns = self
            .namespace(a, &req.namespace, Right::Write)
            .map_err(|e| prefixed(e, prefix))?;
        let mut v = Violations::default();
        let f = |name: &str| format!("{prefix}{name}");
        validate::key(&mut v, &f("key"), &req.key, &ns.policy);
        validate::value(&mut v, &f("value"), &req.value, &ns.policy);
        validate::tags(&mut v, &f("tags"), &req.tags, &ns.policy);
        let ttl = validate::duration(&mut v, &f("ttl"), req.ttl.as_ref(), true);
        let stale_ttl = validate::duration(&mut v, &f("stale_ttl"), req.stale_ttl.as_ref(), false);
        v.finish()?;
        Ok(CheckedSet { ns, ttl, stale_ttl })
    }

    async fn apply_set(
        &self,
        (ns, ttl, stale_ttl): OpenSet,
        req: pb::SetRequest,
    ) -> Result<pb::SetResponse, ApiError> {
        let outcome = self
            .cache
            .set(
                &ns,
                &req.key,
                WriteArgs {
                    value: owned(req.value),
                    ttl,
                    stale_ttl,
                    tags: req.tags,
                    condition: convert::write_condition(req.condition),
                },
            )
            .await?;
        Ok(convert::set_response(outcome))
    }

    async fn delete_one(
        &self,
        a: &Access,
        req: pb::DeleteRequest,
    ) -> Result<pb::DeleteResponse, ApiError> {
        let ns = self.namespace(a, &req.namespace, Right::Write)?;
        let mut v = Violations::default();
        validate::key(&mut v, "key", &req.key, &ns.policy);
        v.finish()?;
        let ns = ns.open()?;
        let outcome = self.cache.delete(&ns, &req.key, req.if_version).await?;
        Ok(convert::delete_response(outcome))
    }
}

/// The operations of one Pipeline stream: the unary handlers, for the stream's caller. Each
/// operation is checked (rights, rate limits) on its own.
#[derive(Clone)]
struct PipelineOps {
    api: CacheApi,
    access: Access,
}

impl pipeline::Operations for PipelineOps {
    async fn get(&self, req: pb::GetRequest) -> Result<pb::GetResponse, ApiError> {
        let r = self.api.get_one(&self.access.renewed(), req).await?;
        ReplyBudget::new(self.api.limits.max_reply_bytes, "key")
            .spend(r.entry.as_ref().map_or(0, |e| e.value.len()))?;
        Ok(r)
    }

    async fn set(&self, req: pb::SetRequest) -> Result<pb::SetResponse, ApiError> {
        self.api.set_one(&self.access.renewed(), req, "").await
    }

    async fn delete(&self, req: pb::DeleteRequest) -> Result<pb::DeleteResponse, ApiError> {
        self.api.delete_one(&self.access.renewed(), req).await
    }
}

/// A valid Set with its namespace opened: the namespace, the TTL and the stale TTL.
type OpenSet = (Arc<Namespace>, Option<Duration>, Option<Duration>);

/// A Set that passed validation.
struct CheckedSet {
    ns: Resolved,
    ttl: Option<Duration>,
    stale_ttl: Option<Duration>,
}

impl CheckedSet {
    /// Opens (maybe creates) the namespace of a valid Set.
    fn open(self) -> Result<OpenSet, ApiError> {
        Ok((self.ns.open()?, self.ttl, self.stale_ttl))
    }
}

/// Validates every item of a batch (fields named `requests[i].…`), then opens (maybe creates)
/// their namespaces, all before the first item is applied: a bad batch changes nothing and
/// creates no namespace.
fn check_all<R>(
    items: &[R],
    check: impl Fn(&R, &str) -> Result<CheckedSet, ApiError>,
) -> Result<Vec<OpenSet>, ApiError> {
    items
        .iter()
        .enumerate()
        .map(|(i, item)| check(item, &format!("requests[{i}].")))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(CheckedSet::open)
        .collect()
}

/// Returns the value in an allocation of its own. A decoded request's `bytes` field is a slice
/// of tonic's receive buffer (8 KiB for a unary call, more for a batch or stream), and L1 would
/// otherwise keep that whole buffer alive for as long as it keeps the value: about 5 KiB of
/// resident memory per 100-byte entry written by unary Set, invisible to the L1 byte budget
/// (`tiercache bench --scenarios memory`).
fn owned(value: bytes::Bytes) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(&value)
}

/// Names the request field whose size a refused reply came from.
fn reply_error(e: CoreError, field: &str) -> ApiError {
    match e {
        CoreError::ReplyTooLarge { limit } => ApiError::ReplyTooLarge {
            field: field.into(),
            limit,
        },
        e => e.into(),
    }
}

/// The value bytes a reply may still carry, spent by answers as they complete.
struct ReplyBudget {
    limit: u64,
    field: &'static str,
    spent: std::sync::atomic::AtomicU64,
}

impl ReplyBudget {
    fn new(limit: u64, field: &'static str) -> Self {
        Self {
            limit,
            field,
            spent: Default::default(),
        }
    }

    /// Spends `bytes`; refuses once the reply would exceed the limit.
    fn spend(&self, bytes: usize) -> Result<(), ApiError> {
        let bytes = bytes as u64;
        let before = self
            .spent
            .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        if before + bytes > self.limit {
            return Err(ApiError::ReplyTooLarge {
                field: self.field.into(),
                limit: self.limit,
            });
        }
        Ok(())
    }
}

fn prefixed(e: ApiError, prefix: &str) -> ApiError {
    match e {
        ApiError::InvalidArgument(v) if !prefix.is_empty() => ApiError::InvalidArgument(
            v.into_iter()
                .map(|(f, d)| (format!("{prefix}{f}"), d))
                .collect(),
        ),
        e => e,
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

struct GetOrSetParams {
    wait: Option<Duration>,
    lease_ttl: Option<Duration>,
    allow_stale: bool,
    refresh_stale: bool,
    on_timeout: pb::WaitTimeoutAction,
}

impl GetOrSetParams {
    /// Validates the options GetOrSet and GetOrSetMany share; `stale` is (allow, refresh).
    fn check(
        v: &mut Violations,
        max_wait: Option<&prost_types::Duration>,
        lease_ttl: Option<&prost_types::Duration>,
        (allow_stale, refresh_stale): (bool, bool),
        on_timeout: pb::WaitTimeoutAction,
    ) -> Self {
        Self {
            wait: validate::duration(v, "max_wait", max_wait, false),
            lease_ttl: validate::duration(v, "lease_ttl", lease_ttl, true),
            allow_stale,
            refresh_stale,
            on_timeout,
        }
    }
}

impl CacheApi {
    async fn get_or_set_one(
        &self,
        ns: &Namespace,
        key: String,
        a: &Access,
        p: &GetOrSetParams,
        deadline: Option<Duration>,
    ) -> Result<pb::GetOrSetResponse, ApiError> {
        let may_lease = a.allows(Right::Write, &ns.name);
        let wait = within_deadline(ns.policy.effective_max_wait(p.wait), deadline);
        let opts = GetOrSetOptions {
            wait,
            allow_stale: p.allow_stale,
            refresh_stale: p.refresh_stale,
            lease_ttl: p.lease_ttl,
            may_lease,
        };
        let applied = self.cache.applied_sequence(ns);
        // `read` suffices for hits and waits; a caller that would be granted the lease (and so
        // would have to compute and Fill) needs `write`.
        let result = match self.cache.get_or_set(ns, &key, opts).await {
            Err(CoreError::LeaseRefused) => return Err(a.denied(Right::Write, &ns.name)),
            r => r?,
        };
        if matches!(result, GetOrSetResult::WaitTimedOut)
            && p.on_timeout == pb::WaitTimeoutAction::Unavailable
        {
            return Err(ApiError::WaitTimeout {
                retry_after: Duration::from_millis(100),
            });
        }
        let mut reply = convert::get_or_set_response(key, result, applied);
        reply.max_wait = Some(tiercache_proto::duration::to_proto(wait));
        Ok(reply)
    }

    async fn fill_one(
        &self,
        a: &Access,
        req: pb::FillRequest,
        prefix: &str,
    ) -> Result<pb::FillResponse, ApiError> {
        let checked = self.check_fill(a, &req, prefix)?.open()?;
        self.apply_fill(checked, req).await
    }

    /// Validates a Fill, naming fields with `prefix` (`requests[2].` in a batch).
    fn check_fill(
        &self,
        a: &Access,
        req: &pb::FillRequest,
        prefix: &str,
    ) -> Result<CheckedSet, ApiError> {
        let ns = self
            .namespace(a, &req.namespace, Right::Write)
            .map_err(|e| prefixed(e, prefix))?;
        let f = |name: &str| format!("{prefix}{name}");
        let mut v = Violations::default();
        validate::key(&mut v, &f("key"), &req.key, &ns.policy);
        validate::value(&mut v, &f("value"), &req.value, &ns.policy);
        validate::tags(&mut v, &f("tags"), &req.tags, &ns.policy);
        if req.lease_token.is_empty() {
            v.add(f("lease_token"), "must not be empty");
        }
        if req.absent && !req.value.is_empty() {
            v.add(f("value"), "must be empty when absent is set");
        }
        let ttl = validate::duration(&mut v, &f("ttl"), req.ttl.as_ref(), true);
        let stale_ttl = validate::duration(&mut v, &f("stale_ttl"), req.stale_ttl.as_ref(), false);
        v.finish()?;
        Ok(CheckedSet { ns, ttl, stale_ttl })
    }

    async fn apply_fill(
        &self,
        (ns, ttl, stale_ttl): (Arc<Namespace>, Option<Duration>, Option<Duration>),
        req: pb::FillRequest,
    ) -> Result<pb::FillResponse, ApiError> {
        let outcome = self
            .cache
            .fill(
                &ns,
                &req.key,
                &req.lease_token,
                FillArgs {
                    value: owned(req.value),
                    ttl,
                    stale_ttl,
                    tags: req.tags,
                    absent: req.absent,
                },
            )
            .await?;
        Ok(convert::fill_response(outcome))
    }
}

#[tonic::async_trait]
impl CacheService for CacheApi {
    async fn get(&self, r: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        Ok(Response::new(self.get_one(&a, r.into_inner()).await?))
    }

    async fn get_many(
        &self,
        r: Request<pb::GetManyRequest>,
    ) -> Result<Response<pb::GetManyResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self.namespace(&a, &req.namespace, Right::Read)?;
        let mut v = Violations::default();
        validate::batch(&mut v, "keys", req.keys.len(), self.limits.max_batch);
        for (i, k) in req.keys.iter().enumerate() {
            validate::key(&mut v, &format!("keys[{i}]"), k, &ns.policy);
        }
        v.finish()?;
        let ns = ns.open()?;
        let keys: Vec<&str> = req.keys.iter().map(String::as_str).collect();
        let opts = ReadOptions {
            fresh_only: req.fresh_only,
        };
        let applied = self.cache.applied_sequence(&ns);
        let results = self
            .cache
            .get_many_within(&ns, &keys, opts, self.limits.max_reply_bytes)
            .await
            .map_err(|e| reply_error(e, "keys"))?;
        Ok(Response::new(pb::GetManyResponse {
            results: results
                .into_iter()
                .map(|l| {
                    telemetry::note_lookup(&l);
                    convert::get_response(l, None, applied)
                })
                .collect(),
        }))
    }

    async fn set(&self, r: Request<pb::SetRequest>) -> Result<Response<pb::SetResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        Ok(Response::new(self.set_one(&a, r.into_inner(), "").await?))
    }

    async fn set_many(
        &self,
        r: Request<pb::SetManyRequest>,
    ) -> Result<Response<pb::SetManyResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        self.check_batch("requests", req.requests.len())?;
        // Validate every item before writing any, so a bad batch writes nothing.
        let checked = check_all(&req.requests, |item, prefix| {
            self.check_set(&a, item, prefix)
        })?;
        let responses = futures::future::try_join_all(
            checked
                .into_iter()
                .zip(req.requests)
                .map(|(checked, item)| self.apply_set(checked, item)),
        )
        .await?;
        Ok(Response::new(pb::SetManyResponse { responses }))
    }

    async fn delete(
        &self,
        r: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        Ok(Response::new(self.delete_one(&a, r.into_inner()).await?))
    }

    async fn get_or_set(
        &self,
        r: Request<pb::GetOrSetRequest>,
    ) -> Result<Response<pb::GetOrSetResponse>, Status> {
        let deadline = grpc_timeout(r.metadata());
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self.namespace(&a, &req.namespace, Right::Read)?;
        let mut v = Violations::default();
        validate::key(&mut v, "key", &req.key, &ns.policy);
        let params = GetOrSetParams::check(
            &mut v,
            req.max_wait.as_ref(),
            req.lease_ttl.as_ref(),
            (req.allow_stale, req.refresh_stale),
            req.on_wait_timeout(),
        );
        v.finish()?;
        let ns = ns.open()?;
        Ok(Response::new(
            self.get_or_set_one(&ns, req.key, &a, &params, deadline)
                .await?,
        ))
    }

    async fn get_or_set_many(
        &self,
        r: Request<pb::GetOrSetManyRequest>,
    ) -> Result<Response<pb::GetOrSetManyResponse>, Status> {
        let deadline = grpc_timeout(r.metadata());
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self.namespace(&a, &req.namespace, Right::Read)?;
        let mut v = Violations::default();
        validate::batch(&mut v, "keys", req.keys.len(), self.limits.max_batch);
        for (i, k) in req.keys.iter().enumerate() {
            validate::key(&mut v, &format!("keys[{i}]"), k, &ns.policy);
        }
        let params = GetOrSetParams::check(
            &mut v,
            req.max_wait.as_ref(),
            req.lease_ttl.as_ref(),
            (req.allow_stale, req.refresh_stale),
            req.on_wait_timeout(),
        );
        v.finish()?;
        let mut seen = std::collections::HashSet::new();
        for (i, k) in req.keys.iter().enumerate() {
            if !seen.insert(k.as_str()) {
                return Err(ApiError::field(format!("keys[{i}]"), "duplicate key").into());
            }
        }
        let ns = ns.open()?;
        // Every key at once: hits answer at once, misses get a lease or wait concurrently. Each
        // answer counts its value against the reply limit as it completes, so an oversized
        // batch stops at the limit rather than after every value was read.
        let budget = ReplyBudget::new(self.limits.max_reply_bytes, "keys");
        // Leases granted to a call that then fails are given back: its caller never saw them,
        // and every other caller of those keys would wait for a fill that never comes.
        let granted = parking_lot::Mutex::new(Vec::new());
        let results = futures::future::try_join_all(req.keys.into_iter().map(|k| {
            let (budget, granted, ns, params, a) = (&budget, &granted, &ns, &params, &a);
            async move {
                let r = self.get_or_set_one(ns, k, a, params, deadline).await?;
                if let Some(lease) = &r.lease {
                    granted.lock().push((r.key.clone(), lease.token.clone()));
                }
                budget.spend(r.entry.as_ref().map_or(0, |e| e.value.len()))?;
                Ok::<_, ApiError>(r)
            }
        }))
        .await;
        match results {
            Ok(results) => Ok(Response::new(pb::GetOrSetManyResponse { results })),
            Err(e) => {
                for (key, token) in granted.into_inner() {
                    if let Err(release) = self.cache.release_lease(&ns, &key, &token).await {
                        tracing::debug!(error = %release, "cannot release the lease of a failed batch");
                    }
                }
                Err(e.into())
            }
        }
    }

    async fn fill(
        &self,
        r: Request<pb::FillRequest>,
    ) -> Result<Response<pb::FillResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        Ok(Response::new(self.fill_one(&a, r.into_inner(), "").await?))
    }

    async fn fill_many(
        &self,
        r: Request<pb::FillManyRequest>,
    ) -> Result<Response<pb::FillManyResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        self.check_batch("requests", req.requests.len())?;
        // Validate every item before filling any, so a bad batch stores nothing and consumes
        // no lease.
        let checked = check_all(&req.requests, |item, prefix| {
            self.check_fill(&a, item, prefix)
        })?;
        let responses = futures::future::try_join_all(
            checked
                .into_iter()
                .zip(req.requests)
                .map(|(checked, item)| self.apply_fill(checked, item)),
        )
        .await?;
        Ok(Response::new(pb::FillManyResponse { responses }))
    }

    async fn release_lease(
        &self,
        r: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<Response<pb::ReleaseLeaseResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self.namespace(&a, &req.namespace, Right::Write)?;
        let mut v = Violations::default();
        validate::key(&mut v, "key", &req.key, &ns.policy);
        if req.lease_token.is_empty() {
            v.add("lease_token", "must not be empty");
        }
        v.finish()?;
        let ns = ns.open()?;
        let released = self
            .cache
            .release_lease(&ns, &req.key, &req.lease_token)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(convert::release_lease_response(released)))
    }

    async fn invalidate_tags(
        &self,
        r: Request<pb::InvalidateTagsRequest>,
    ) -> Result<Response<pb::InvalidateTagsResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self.namespace(&a, &req.namespace, Right::Invalidate)?;
        let mut v = Violations::default();
        validate::batch(&mut v, "tags", req.tags.len(), self.limits.max_batch);
        if req.tags.len() <= self.limits.max_batch {
            let policy = tiercache_core::NamespacePolicy {
                max_tags: self.limits.max_batch,
                ..ns.policy.clone()
            };
            validate::tags(&mut v, "tags", &req.tags, &policy);
        }
        v.finish()?;
        let ns = ns.open()?;
        let sequence = self
            .cache
            .invalidate_tags(&ns, &req.tags)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(pb::InvalidateTagsResponse { sequence }))
    }

    async fn flush_namespace(
        &self,
        r: Request<pb::FlushNamespaceRequest>,
    ) -> Result<Response<pb::FlushNamespaceResponse>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self
            .namespace(&a, &req.namespace, Right::Invalidate)?
            .open()?;
        let sequence = self.cache.flush(&ns).await.map_err(ApiError::from)?;
        Ok(Response::new(pb::FlushNamespaceResponse { sequence }))
    }

    type PipelineStream = BoxStream<pb::PipelineResponse>;

    async fn pipeline(
        &self,
        r: Request<Streaming<pipeline::RawPipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        let ops = PipelineOps {
            api: self.clone(),
            access: Access::of(&self.guard, &r),
        };
        let cache = self.cache.clone();
        let open = self.streams.open(StreamKind::Pipeline);
        let stream = pipeline::serve(
            ops,
            r.into_inner(),
            self.limits.pipeline_max_in_flight,
            async move { cache.drained().await },
            open,
        );
        Ok(Response::new(Box::pin(stream)))
    }

    type WatchStream = BoxStream<pb::WatchResponse>;

    async fn watch(
        &self,
        r: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let a = Access::of(&self.guard, &r);
        let req = r.into_inner();
        let ns = self.namespace(&a, &req.namespace, Right::Read)?.open()?;
        let mut watch = self.cache.watch(&ns).await.map_err(ApiError::from)?;
        // One slot more than the buffer, kept for the status that ends an overflowing stream.
        let buffer = self.limits.watch_buffer;
        let (tx, rx) = mpsc::channel(buffer + 1);
        let started = convert::watch_started(watch.start_sequence());
        let cache = self.cache.clone();
        let open = self.streams.open(StreamKind::Watch);
        tokio::spawn(async move {
            let _open = open;
            if tx.send(Ok(started)).await.is_err() {
                return;
            }
            loop {
                // End with the client, even while no event comes, and at shutdown.
                let event = tokio::select! {
                    e = watch.next() => e,
                    () = tx.closed() => return,
                    () = cache.drained() => {
                        let _ = tx.try_send(Err(ApiError::from(CoreError::Draining).into()));
                        return;
                    }
                };
                let Some(event) = event else { return };
                // A consumer that does not keep up is told so and its stream ends: the server
                // never buffers more than `limits.watch_buffer` events for it.
                if tx.capacity() <= 1 {
                    let _ = tx.try_send(Err(ApiError::WatchOverflow { buffered: buffer }.into()));
                    return;
                }
                if tx.try_send(Ok(convert::watch_event(event))).is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn owned_values_do_not_share_the_request_buffer() {
        let buffer = bytes::Bytes::from(vec![7u8; 8192]);
        let value = buffer.slice(100..200);
        let owned = super::owned(value.clone());
        assert_eq!(owned, value);
        assert_ne!(owned.as_ptr(), value.as_ptr());
    }
}
