//! `get_or_set` and `get_or_set_many`: the lease protocol driven for the caller.
//!
//! The closure runs only when this caller holds a lease (or the wait bound passed with
//! [`OnWaitTimeout::Compute`]). Its `Ok(Some(v))` is filled as the value, `Ok(None)` as a
//! negative entry ("the origin says it does not exist", kept for the namespace's negative TTL);
//! its `Err` is returned to the caller and the lease released, so errors are never cached and
//! the next caller computes again. A lease whose caller is dropped mid-computation is released
//! by a spawned task.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tiercache_proto::duration::to_proto;
use tiercache_proto::v1;

use crate::client::Idempotent;
use crate::{Client, Entry, Error, GetOrSetOptions, Namespace, OnWaitTimeout};

/// The server's default `max_wait`: how long a `get_or_set` without one may wait on the
/// server, added to its deadline (the namespace's own bound is not known here).
const SERVER_DEFAULT_MAX_WAIT: Duration = Duration::from_secs(5);

/// How long a call with these options may wait on the server, on top of the request timeout.
fn wait_of(opts: &GetOrSetOptions) -> Option<Duration> {
    Some(opts.max_wait.unwrap_or(SERVER_DEFAULT_MAX_WAIT))
}

/// A lease this caller holds; released by a spawned task if dropped while still armed.
struct LeaseGuard {
    client: Client,
    namespace: String,
    key: String,
    token: Option<String>,
}

impl LeaseGuard {
    fn new(ns: &Namespace, key: &str, token: String) -> Self {
        Self {
            client: ns.client.clone(),
            namespace: ns.name.clone(),
            key: key.to_string(),
            token: Some(token),
        }
    }

    /// Takes the token out: the caller fills with it.
    fn take(&mut self) -> String {
        self.token.take().unwrap_or_default()
    }

    /// Gives the lease back now so a waiter can take over.
    async fn release(mut self) {
        if let Some(token) = self.token.take() {
            release(&self.client, &self.namespace, &self.key, token).await;
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(token) = self.token.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let (client, ns, key) = (
                    self.client.clone(),
                    std::mem::take(&mut self.namespace),
                    std::mem::take(&mut self.key),
                );
                rt.spawn(async move { release(&client, &ns, &key, token).await });
            }
        }
    }
}

async fn release(client: &Client, namespace: &str, key: &str, token: String) {
    let req = v1::ReleaseLeaseRequest {
        namespace: namespace.to_string(),
        key: key.to_string(),
        lease_token: token,
    };
    let r = client
        .call(Idempotent::No, req, |mut c, r| async move {
            c.cache().release_lease(r).await
        })
        .await;
    if let Err(e) = r {
        // The lease expires on its own after its TTL.
        tracing::warn!(namespace, key, error = %e, "cannot release tiercache lease");
    }
}

fn fill_request(
    namespace: &str,
    key: &str,
    token: String,
    value: Option<&Bytes>,
    opts: &GetOrSetOptions,
) -> v1::FillRequest {
    v1::FillRequest {
        namespace: namespace.to_string(),
        key: key.to_string(),
        lease_token: token,
        value: value.cloned().unwrap_or_default(),
        ttl: opts.ttl.map(to_proto),
        stale_ttl: opts.stale_ttl.map(to_proto),
        tags: opts.tags.clone(),
        absent: value.is_none(),
    }
}

/// Fills `key`; a failed or refused fill is logged, not returned: the caller has its value.
async fn fill(client: &Client, req: v1::FillRequest) {
    let (ns, key) = (req.namespace.clone(), req.key.clone());
    match client
        .call(Idempotent::No, req, |mut c, r| async move {
            c.cache().fill(r).await
        })
        .await
    {
        Ok(r) if r.outcome() == v1::FillOutcome::Stored => {}
        Ok(r) => tracing::debug!(namespace = ns, key, outcome = ?r.outcome(), "fill not stored"),
        Err(e) => tracing::warn!(namespace = ns, key, error = %e, "cannot fill tiercache entry"),
    }
}

fn value_of(e: &Entry) -> Option<Bytes> {
    (!e.absent).then(|| e.value.clone())
}

fn request(ns: &Namespace, key: &str, opts: &GetOrSetOptions) -> v1::GetOrSetRequest {
    v1::GetOrSetRequest {
        namespace: ns.name.clone(),
        key: key.to_string(),
        max_wait: opts.max_wait.map(to_proto),
        allow_stale: opts.allow_stale,
        refresh_stale: opts.allow_stale && opts.refresh_stale,
        on_wait_timeout: wait_action(opts.on_wait_timeout) as i32,
        lease_ttl: opts.lease_ttl.map(to_proto),
    }
}

fn wait_action(o: OnWaitTimeout) -> v1::WaitTimeoutAction {
    match o {
        OnWaitTimeout::Compute => v1::WaitTimeoutAction::Compute,
        OnWaitTimeout::Unavailable => v1::WaitTimeoutAction::Unavailable,
    }
}

fn entry_of(r: &v1::GetOrSetResponse) -> Result<Entry, Error> {
    r.entry
        .clone()
        .map(Entry::from)
        .ok_or_else(|| Error::UnexpectedResponse(format!("{:?} without an entry", r.outcome())))
}

impl Namespace {
    /// Returns the value under `key`, computing it with `f` on a miss — with stampede protection
    /// across every client of the fleet: of all concurrent callers, one gets a lease and runs
    /// `f`; the others wait for its fill and get the value pushed.
    ///
    /// - `f` returns `Ok(Some(value))` to cache a value, `Ok(None)` to cache "does not exist"
    ///   (a negative entry; later callers get `Ok(None)` without calling `f`), or `Err(e)`:
    ///   then `e` is returned, nothing is cached, the lease is released and a waiter takes over.
    /// - A stale hit (within the stale window, with `allow_stale`) is returned at once; when the
    ///   server hands this caller the refresh lease, `f` runs in a spawned task that fills the
    ///   entry (or releases the lease on error: the stale value keeps serving). That is why `f`
    ///   must be `Send + 'static`.
    /// - When the wait bound passes with [`OnWaitTimeout::Compute`], `f` runs without a lease
    ///   and its value is returned but not cached.
    /// - A fill the server refuses (the lease was revoked by a write or invalidation, or
    ///   expired) still returns the computed value to this caller.
    pub async fn get_or_set<F, Fut, E>(
        &self,
        key: impl Into<String>,
        opts: GetOrSetOptions,
        f: F,
    ) -> Result<Option<Bytes>, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<Bytes>, E>> + Send + 'static,
        E: From<Error> + std::fmt::Display + Send + 'static,
    {
        let key = key.into();
        if let Some(e) = self.near.as_ref().and_then(|n| n.get(&key)) {
            return Ok(value_of(&e));
        }
        let ticket = self.near.as_ref().and_then(|n| n.ticket(&key));
        let req = request(self, &key, &opts);
        let r = self
            .client
            .call_waiting(Idempotent::No, wait_of(&opts), req, |mut c, r| async move {
                c.cache().get_or_set(r).await
            })
            .await?;
        match r.outcome() {
            v1::GetOrSetOutcome::Hit | v1::GetOrSetOutcome::Filled => {
                let entry = entry_of(&r)?;
                if let (Some(n), Some(t)) = (&self.near, ticket) {
                    n.insert(&key, &entry, t, r.applied_sequence);
                }
                if let Some(lease) = r.lease {
                    // A stale hit with the refresh lease: refresh in the background.
                    let guard = LeaseGuard::new(self, &key, lease.token);
                    let client = self.client.clone();
                    let ns = self.name.clone();
                    tokio::spawn(async move {
                        let mut guard = guard;
                        match f().await {
                            Ok(v) => {
                                let token = guard.take();
                                fill(&client, fill_request(&ns, &key, token, v.as_ref(), &opts))
                                    .await;
                            }
                            Err(e) => {
                                tracing::warn!(namespace = ns, key, error = %e,
                                    "background refresh failed; the stale value keeps serving");
                                guard.release().await;
                            }
                        }
                    });
                }
                Ok(value_of(&entry))
            }
            v1::GetOrSetOutcome::Lease => {
                let token = r
                    .lease
                    .ok_or_else(|| Error::UnexpectedResponse("LEASE without a lease".into()))?
                    .token;
                let mut guard = LeaseGuard::new(self, &key, token);
                match f().await {
                    Ok(v) => {
                        let token = guard.take();
                        let req = fill_request(&self.name, &key, token, v.as_ref(), &opts);
                        fill(&self.client, req).await;
                        if let Some(n) = &self.near {
                            n.forget(&key);
                        }
                        Ok(v)
                    }
                    Err(e) => {
                        guard.release().await;
                        Err(e)
                    }
                }
            }
            v1::GetOrSetOutcome::Compute => f().await,
            v1::GetOrSetOutcome::Unspecified => {
                Err(crate::namespace::unknown_outcome("get_or_set", r.outcome).into())
            }
        }
    }

    /// The batch form of [`get_or_set`](Self::get_or_set): one `GetOrSetMany` call, then **one**
    /// call of `f` with exactly the keys this caller must compute — those it got a lease for
    /// (misses, and stale hits it got the refresh lease for) and those whose wait bound passed
    /// with [`OnWaitTimeout::Compute`] — then one `FillMany` for the leased ones.
    ///
    /// `f` returns a map from key to value. **A key the map leaves out is filled as absent** (a
    /// negative entry, kept for the namespace's negative TTL) and reads as `None`: the origin
    /// was asked and did not have it, which is what a batch lookup such as
    /// `SELECT … WHERE id IN (…)` reports by leaving a row out. Keys `f` returns that were not
    /// asked for are ignored. On `Err`, every lease is released, nothing is cached and the error
    /// is returned.
    ///
    /// Returns one item per key, in order. The near cache is not consulted for batches.
    pub async fn get_or_set_many<I, K, F, Fut, E>(
        &self,
        keys: I,
        opts: GetOrSetOptions,
        f: F,
    ) -> Result<Vec<Option<Bytes>>, E>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<HashMap<String, Bytes>, E>>,
        E: From<Error>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let one = request(self, "", &opts);
        let req = v1::GetOrSetManyRequest {
            namespace: self.name.clone(),
            keys: keys.clone(),
            max_wait: one.max_wait,
            allow_stale: one.allow_stale,
            refresh_stale: one.refresh_stale,
            on_wait_timeout: one.on_wait_timeout,
            lease_ttl: one.lease_ttl,
        };
        let resp = self
            .client
            .call_waiting(Idempotent::No, wait_of(&opts), req, |mut c, r| async move {
                c.cache().get_or_set_many(r).await
            })
            .await?;
        if resp.results.len() != keys.len() {
            return Err(Error::UnexpectedResponse(format!(
                "get_or_set_many asked for {} keys, got {} results",
                keys.len(),
                resp.results.len()
            ))
            .into());
        }
        let mut out: Vec<Option<Bytes>> = vec![None; keys.len()];
        // (index, lease guard when leased)
        let mut compute: Vec<(usize, Option<LeaseGuard>)> = Vec::new();
        for (i, r) in resp.results.into_iter().enumerate() {
            match r.outcome() {
                v1::GetOrSetOutcome::Hit | v1::GetOrSetOutcome::Filled => {
                    out[i] = value_of(&entry_of(&r)?);
                    if let Some(lease) = r.lease {
                        compute.push((i, Some(LeaseGuard::new(self, &keys[i], lease.token))));
                    }
                }
                v1::GetOrSetOutcome::Lease => {
                    let lease = r
                        .lease
                        .ok_or_else(|| Error::UnexpectedResponse("LEASE without a lease".into()))?;
                    compute.push((i, Some(LeaseGuard::new(self, &keys[i], lease.token))));
                }
                v1::GetOrSetOutcome::Compute => compute.push((i, None)),
                v1::GetOrSetOutcome::Unspecified => {
                    return Err(
                        crate::namespace::unknown_outcome("get_or_set_many", r.outcome).into(),
                    )
                }
            }
        }
        if compute.is_empty() {
            return Ok(out);
        }
        let asked: Vec<String> = compute.iter().map(|(i, _)| keys[*i].clone()).collect();
        let values = match f(asked).await {
            Ok(v) => v,
            Err(e) => {
                for (_, guard) in compute {
                    if let Some(g) = guard {
                        g.release().await;
                    }
                }
                return Err(e);
            }
        };
        let mut fills = Vec::new();
        for (i, guard) in compute {
            let v = values.get(&keys[i]);
            if let Some(mut g) = guard {
                fills.push(fill_request(&self.name, &keys[i], g.take(), v, &opts));
            }
            out[i] = v.cloned();
        }
        if !fills.is_empty() {
            let n = fills.len();
            let req = v1::FillManyRequest { requests: fills };
            match self
                .client
                .call(Idempotent::No, req, |mut c, r| async move {
                    c.cache().fill_many(r).await
                })
                .await
            {
                Ok(r) => {
                    let stored = r
                        .responses
                        .iter()
                        .filter(|r| r.outcome() == v1::FillOutcome::Stored)
                        .count();
                    tracing::debug!(namespace = self.name, n, stored, "filled batch");
                }
                Err(e) => {
                    tracing::warn!(namespace = self.name, error = %e, "cannot fill tiercache batch")
                }
            }
        }
        Ok(out)
    }
}
