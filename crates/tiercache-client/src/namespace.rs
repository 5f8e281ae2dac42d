//! [`Namespace`]: reads, writes and invalidation within one namespace, with the optional near
//! cache in front.

use std::sync::Arc;

use bytes::Bytes;
use tiercache_proto::duration::to_proto;
use tiercache_proto::v1::{self, pipeline_request::Operation, pipeline_response, write_condition};
use tokio::time::Instant;

use crate::client::Idempotent;
use crate::near::{NearCache, NearCacheConfig, NearCacheStats};
use crate::{
    Client, Condition, DeleteResult, Entry, Error, GetOptions, GetResult, Inspection, Result,
    SetOptions, SetResult, WatchEvent,
};

/// A handle on one namespace of a [`Client`]. Cheap to clone; clones share the near cache, if
/// any.
#[derive(Debug, Clone)]
pub struct Namespace {
    pub(crate) client: Client,
    pub(crate) name: String,
    pub(crate) near: Option<Arc<NearCache>>,
}

impl Client {
    /// Returns a handle on namespace `name`. No call is made; an unknown namespace shows up as
    /// [`Error::NotFound`] on first use.
    pub fn namespace(&self, name: impl Into<String>) -> Namespace {
        Namespace::new(self.clone(), name.into())
    }
}

impl Namespace {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Self {
            client,
            name,
            near: None,
        }
    }

    /// Returns the namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns this handle with a near cache (L0) in front: an in-process cache of fresh
    /// entries, bounded in bytes, kept coherent by the namespace's `Watch` stream (a background
    /// task that lives as long as the returned handle or a clone of it). Reads it answers report
    /// [`Tier::Near`](crate::Tier::Near).
    ///
    /// Coherence: a write or invalidation by any client reaches L0 as soon as its event arrives
    /// on the Watch stream (about a millisecond on a local network; see the tests); entries never
    /// outlive their fresh period on the server, stale entries are never served from L0, and L0
    /// is cleared whenever an event may have been lost (gap, sequence jump, broken stream). A
    /// reply is kept only if the replica that answered had applied at least the sequence the
    /// Watch stream has reached, so the stream and the reads may reach different replicas
    /// (a per-request balancer): a lagging replica's answer is returned but not kept.
    /// Must be called inside a tokio runtime. Each call starts its own near cache and stream:
    /// call it once and clone the handle.
    pub fn with_near_cache(mut self, config: NearCacheConfig) -> Self {
        self.near = Some(NearCache::start(
            self.client.clone(),
            self.name.clone(),
            config,
        ));
        self
    }

    /// Returns the near cache's counters, or `None` when this handle has none.
    pub fn near_cache_stats(&self) -> Option<NearCacheStats> {
        self.near.as_ref().map(|n| n.stats())
    }

    /// Returns the version the near cache holds for `key`, if it holds a fresh entry
    /// (diagnostics; a read may still go to the server while the Watch stream is down).
    pub fn near_cache_version(&self, key: &str) -> Option<u64> {
        self.near.as_ref().and_then(|n| n.peek_version(key))
    }

    /// Returns the entry under `key` (maybe stale), or `None` on a miss.
    pub async fn get(&self, key: impl Into<String>) -> Result<Option<Entry>> {
        Ok(self.get_with(key, GetOptions::default()).await?.into_hit())
    }

    /// Reads `key` with options: a conditional read (`if_version_not`) or fresh entries only.
    /// Conditional reads bypass the near cache.
    pub async fn get_with(&self, key: impl Into<String>, opts: GetOptions) -> Result<GetResult> {
        let key = key.into();
        let near = self.near.as_ref().filter(|_| opts.if_version_not.is_none());
        if let Some(e) = near.and_then(|n| n.get(&key)) {
            return Ok(GetResult::Hit(e));
        }
        let ticket = near.and_then(|n| n.ticket(&key));
        let req = v1::GetRequest {
            namespace: self.name.clone(),
            key: key.clone(),
            if_version_not: opts.if_version_not,
            fresh_only: opts.fresh_only,
        };
        let resp = self.raw_get(req).await?;
        let applied = resp.applied_sequence;
        let result = get_result(resp)?;
        if let (Some(n), Some(t), GetResult::Hit(e)) = (near, ticket, &result) {
            n.insert(&key, e, t, applied);
        }
        Ok(result)
    }

    /// Reads many keys in one call; the result has one item per key, in order (`None` for a
    /// miss). The server bounds the batch size (`limits.max_batch`). Keys the near cache holds
    /// are answered from it; the rest go to the server in one `GetMany`.
    pub async fn get_many<I, K>(&self, keys: I) -> Result<Vec<Option<Entry>>>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let mut out: Vec<Option<Entry>> = vec![None; keys.len()];
        let mut ask = Vec::new();
        let mut tickets = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match self.near.as_ref().and_then(|n| n.get(k)) {
                Some(e) => out[i] = Some(e),
                None => {
                    ask.push(i);
                    tickets.push(self.near.as_ref().and_then(|n| n.ticket(k)));
                }
            }
        }
        if ask.is_empty() {
            return Ok(out);
        }
        let req = v1::GetManyRequest {
            namespace: self.name.clone(),
            keys: ask.iter().map(|&i| keys[i].clone()).collect(),
            fresh_only: false,
        };
        let resp = self
            .client
            .call(Idempotent::Yes, req, |mut c, r| async move {
                c.cache().get_many(r).await
            })
            .await?;
        if resp.results.len() != ask.len() {
            return Err(Error::UnexpectedResponse(format!(
                "get_many asked for {} keys, got {} results",
                ask.len(),
                resp.results.len()
            )));
        }
        for ((i, ticket), r) in ask.into_iter().zip(tickets).zip(resp.results) {
            let applied = r.applied_sequence;
            let hit = get_result(r)?.into_hit();
            if let (Some(n), Some(t), Some(e)) = (&self.near, ticket, &hit) {
                n.insert(&keys[i], e, t, applied);
            }
            out[i] = hit;
        }
        Ok(out)
    }

    /// Stores `value` under `key` with the namespace's default TTLs and returns the new version.
    pub async fn set(&self, key: impl Into<String>, value: impl Into<Bytes>) -> Result<u64> {
        match self.set_with(key, value, SetOptions::default()).await? {
            SetResult::Stored { version } => Ok(version),
            other => Err(Error::UnexpectedResponse(format!(
                "unconditional set answered {other:?}"
            ))),
        }
    }

    /// Stores `value` under `key` with TTLs, tags and an optional condition. A failed condition is
    /// an `Ok` outcome, not an error.
    pub async fn set_with(
        &self,
        key: impl Into<String>,
        value: impl Into<Bytes>,
        opts: SetOptions,
    ) -> Result<SetResult> {
        let key = key.into();
        let req = v1::SetRequest {
            namespace: self.name.clone(),
            key: key.clone(),
            value: value.into(),
            ttl: opts.ttl.map(to_proto),
            stale_ttl: opts.stale_ttl.map(to_proto),
            tags: opts.tags,
            condition: opts.condition.map(|c| v1::WriteCondition {
                condition: Some(match c {
                    Condition::IfAbsent => write_condition::Condition::IfAbsent(true),
                    Condition::IfVersion(v) => write_condition::Condition::IfVersion(v),
                }),
            }),
        };
        let resp = match self.client.pipeline() {
            Some(p) => match p
                .call(Operation::Set(req), self.client.request_timeout())
                .await
            {
                Ok(pipeline_response::Result::Set(r)) => Ok(r),
                Ok(other) => Err(wrong_answer("set", &other)),
                Err(e) => Err(e),
            },
            None => {
                self.client
                    .call(Idempotent::No, req, |mut c, r| async move {
                        c.cache().set(r).await
                    })
                    .await
            }
        };
        // Forget the old value even when the outcome is unknown (a timeout may have written).
        if let Some(n) = &self.near {
            n.forget(&key);
        }
        let resp = resp?;
        Ok(match resp.outcome() {
            v1::SetOutcome::Stored => SetResult::Stored {
                version: resp.version,
            },
            v1::SetOutcome::VersionMismatch => SetResult::VersionMismatch {
                current: resp.current_version,
            },
            v1::SetOutcome::Exists => SetResult::Exists {
                current: resp.current_version,
            },
            v1::SetOutcome::Unspecified => return Err(unknown_outcome("set", resp.outcome)),
        })
    }

    /// Removes `key` and revokes any lease on it; returns whether a visible entry was removed.
    pub async fn delete(&self, key: impl Into<String>) -> Result<bool> {
        match self.delete_inner(key.into(), None).await? {
            DeleteResult::Deleted => Ok(true),
            DeleteResult::NotFound => Ok(false),
            other => Err(Error::UnexpectedResponse(format!(
                "unconditional delete answered {other:?}"
            ))),
        }
    }

    /// Removes `key` only if its current version is `version`.
    pub async fn delete_if_version(
        &self,
        key: impl Into<String>,
        version: u64,
    ) -> Result<DeleteResult> {
        self.delete_inner(key.into(), Some(version)).await
    }

    async fn delete_inner(&self, key: String, if_version: Option<u64>) -> Result<DeleteResult> {
        let req = v1::DeleteRequest {
            namespace: self.name.clone(),
            key: key.clone(),
            if_version,
        };
        let resp = match self.client.pipeline() {
            Some(p) => match p
                .call(Operation::Delete(req), self.client.request_timeout())
                .await
            {
                Ok(pipeline_response::Result::Delete(r)) => Ok(r),
                Ok(other) => Err(wrong_answer("delete", &other)),
                Err(e) => Err(e),
            },
            None => {
                self.client
                    .call(Idempotent::No, req, |mut c, r| async move {
                        c.cache().delete(r).await
                    })
                    .await
            }
        };
        if let Some(n) = &self.near {
            n.forget(&key);
        }
        let resp = resp?;
        Ok(match resp.outcome() {
            v1::DeleteOutcome::Deleted => DeleteResult::Deleted,
            v1::DeleteOutcome::NotFound => DeleteResult::NotFound,
            v1::DeleteOutcome::VersionMismatch => DeleteResult::VersionMismatch {
                current: resp.current_version,
            },
            v1::DeleteOutcome::Unspecified => return Err(unknown_outcome("delete", resp.outcome)),
        })
    }

    /// Hides every entry carrying any of `tags`, on every tier and replica (and in every near
    /// cache, through its Watch stream); returns the namespace sequence the invalidation took.
    pub async fn invalidate_tags<I, T>(&self, tags: I) -> Result<u64>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let req = v1::InvalidateTagsRequest {
            namespace: self.name.clone(),
            tags: tags.into_iter().map(Into::into).collect(),
        };
        let resp = self
            .client
            .call(Idempotent::No, req, |mut c, r| async move {
                c.cache().invalidate_tags(r).await
            })
            .await?;
        Ok(resp.sequence)
    }

    /// Hides every entry of the namespace; returns the namespace sequence the flush took.
    pub async fn flush(&self) -> Result<u64> {
        let req = v1::FlushNamespaceRequest {
            namespace: self.name.clone(),
        };
        let resp = self
            .client
            .call(Idempotent::No, req, |mut c, r| async move {
                c.cache().flush_namespace(r).await
            })
            .await?;
        Ok(resp.sequence)
    }

    /// Opens the namespace's invalidation event stream. The first event is
    /// [`WatchEventKind::Started`](crate::WatchEventKind::Started) with the current sequence.
    /// Opening is bounded by the request timeout; the stream itself is not.
    pub async fn watch(&self) -> Result<WatchStream> {
        let req = v1::WatchRequest {
            namespace: self.name.clone(),
        };
        let stream = self.client.open_watch(req).await?;
        Ok(WatchStream { inner: stream })
    }

    /// Explains `key`: which tiers hold it, its version, tags and their marks, whether it is
    /// visible and why, and any lease on it.
    pub async fn inspect(&self, key: impl Into<String>) -> Result<Inspection> {
        let req = v1::InspectRequest {
            namespace: self.name.clone(),
            key: key.into(),
        };
        self.client
            .call(Idempotent::Yes, req, |mut c, r| async move {
                c.admin().inspect(r).await
            })
            .await
    }

    async fn raw_get(&self, req: v1::GetRequest) -> Result<v1::GetResponse> {
        let Some(p) = self.client.pipeline() else {
            return self
                .client
                .call(Idempotent::Yes, req, |mut c, r| async move {
                    c.cache().get(r).await
                })
                .await;
        };
        let deadline = self.client.request_timeout().map(|t| Instant::now() + t);
        self.client
            .with_retries(Idempotent::Yes, deadline, |remaining| {
                let req = req.clone();
                async move {
                    match p.call(Operation::Get(req), remaining).await? {
                        pipeline_response::Result::Get(r) => Ok(r),
                        other => Err(wrong_answer("get", &other)),
                    }
                }
            })
            .await
    }
}

/// A namespace's invalidation events, from [`Namespace::watch`].
#[derive(Debug)]
pub struct WatchStream {
    inner: tonic::Streaming<v1::WatchResponse>,
}

impl WatchStream {
    /// Returns the next event, or `None` when the server ended the stream. Event kinds this SDK
    /// does not know are skipped.
    pub async fn next(&mut self) -> Result<Option<WatchEvent>> {
        loop {
            match self.inner.message().await? {
                None => return Ok(None),
                Some(m) => {
                    if let Some(e) = WatchEvent::from_wire(m) {
                        return Ok(Some(e));
                    }
                }
            }
        }
    }
}

pub(crate) fn get_result(resp: v1::GetResponse) -> Result<GetResult> {
    let outcome = resp.outcome();
    let entry = || {
        resp.entry
            .clone()
            .map(Entry::from)
            .ok_or_else(|| Error::UnexpectedResponse(format!("{outcome:?} without an entry")))
    };
    Ok(match outcome {
        v1::GetOutcome::Hit => GetResult::Hit(entry()?),
        v1::GetOutcome::Miss => GetResult::Miss,
        v1::GetOutcome::NotModified => GetResult::NotModified(entry()?),
        v1::GetOutcome::Unspecified => return Err(unknown_outcome("get", resp.outcome)),
    })
}

pub(crate) fn unknown_outcome(call: &str, value: i32) -> Error {
    Error::UnexpectedResponse(format!("{call} answered unknown outcome {value}"))
}

fn wrong_answer(call: &str, got: &pipeline_response::Result) -> Error {
    Error::UnexpectedResponse(format!("pipelined {call} answered {got:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_result_from_wire() {
        let hit = v1::GetResponse {
            outcome: v1::GetOutcome::Hit as i32,
            entry: Some(v1::Entry {
                value: Bytes::from_static(b"x"),
                version: 3,
                ..Default::default()
            }),
            applied_sequence: 0,
        };
        match get_result(hit).unwrap() {
            GetResult::Hit(e) => {
                assert_eq!(e.value, Bytes::from_static(b"x"));
                assert_eq!(e.version, 3);
            }
            other => panic!("unexpected {other:?}"),
        }
        let miss = v1::GetResponse {
            outcome: v1::GetOutcome::Miss as i32,
            entry: None,
            applied_sequence: 0,
        };
        assert_eq!(get_result(miss).unwrap(), GetResult::Miss);
    }

    #[test]
    fn malformed_get_responses_are_errors_not_panics() {
        let hit_without_entry = v1::GetResponse {
            outcome: v1::GetOutcome::Hit as i32,
            entry: None,
            applied_sequence: 0,
        };
        assert!(matches!(
            get_result(hit_without_entry),
            Err(Error::UnexpectedResponse(_))
        ));
        let unknown = v1::GetResponse {
            outcome: 99,
            entry: None,
            applied_sequence: 0,
        };
        assert!(matches!(
            get_result(unknown),
            Err(Error::UnexpectedResponse(_))
        ));
    }
}
