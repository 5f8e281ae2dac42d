//! [`Namespace`]: reads, writes and invalidation within one namespace.

use bytes::Bytes;
use tiercache_proto::v1::{self, write_condition};

use crate::duration::to_proto;
use crate::{
    Client, Condition, DeleteResult, Entry, Error, GetOptions, GetResult, Result, SetOptions,
    SetResult,
};

/// A handle on one namespace of a [`Client`]. Cheap to clone; holds no server state.
#[derive(Debug, Clone)]
pub struct Namespace {
    client: Client,
    name: String,
}

impl Namespace {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Self { client, name }
    }

    /// Returns the namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Returns the entry under `key` (maybe stale), or `None` on a miss.
    pub async fn get(&self, key: impl Into<String>) -> Result<Option<Entry>> {
        Ok(self.get_with(key, GetOptions::default()).await?.into_hit())
    }

    /// Reads `key` with options: a conditional read (`if_version_not`) or fresh entries only.
    pub async fn get_with(&self, key: impl Into<String>, opts: GetOptions) -> Result<GetResult> {
        let req = v1::GetRequest {
            namespace: self.name.clone(),
            key: key.into(),
            if_version_not: opts.if_version_not,
            fresh_only: opts.fresh_only,
        };
        let resp = self.client.cache().get(req).await?.into_inner();
        get_result(resp)
    }

    /// Reads many keys in one call; the result has one item per key, in order (`None` for a
    /// miss). The server bounds the batch size (`limits.max_batch`).
    pub async fn get_many<I, K>(&self, keys: I) -> Result<Vec<Option<Entry>>>
    where
        I: IntoIterator<Item = K>,
        K: Into<String>,
    {
        let keys: Vec<String> = keys.into_iter().map(Into::into).collect();
        let n = keys.len();
        let req = v1::GetManyRequest {
            namespace: self.name.clone(),
            keys,
            fresh_only: false,
        };
        let resp = self.client.cache().get_many(req).await?.into_inner();
        if resp.results.len() != n {
            return Err(Error::UnexpectedResponse(format!(
                "get_many asked for {n} keys, got {} results",
                resp.results.len()
            )));
        }
        resp.results
            .into_iter()
            .map(|r| get_result(r).map(GetResult::into_hit))
            .collect()
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
        let req = v1::SetRequest {
            namespace: self.name.clone(),
            key: key.into(),
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
        let resp = self.client.cache().set(req).await?.into_inner();
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
            key,
            if_version,
        };
        let resp = self.client.cache().delete(req).await?.into_inner();
        Ok(match resp.outcome() {
            v1::DeleteOutcome::Deleted => DeleteResult::Deleted,
            v1::DeleteOutcome::NotFound => DeleteResult::NotFound,
            v1::DeleteOutcome::VersionMismatch => DeleteResult::VersionMismatch {
                current: resp.current_version,
            },
            v1::DeleteOutcome::Unspecified => return Err(unknown_outcome("delete", resp.outcome)),
        })
    }

    /// Hides every entry carrying any of `tags`, on every tier and replica; returns the namespace
    /// sequence the invalidation took.
    pub async fn invalidate_tags<I, T>(&self, tags: I) -> Result<u64>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let req = v1::InvalidateTagsRequest {
            namespace: self.name.clone(),
            tags: tags.into_iter().map(Into::into).collect(),
        };
        Ok(self
            .client
            .cache()
            .invalidate_tags(req)
            .await?
            .into_inner()
            .sequence)
    }

    /// Hides every entry of the namespace; returns the namespace sequence the flush took.
    pub async fn flush(&self) -> Result<u64> {
        let req = v1::FlushNamespaceRequest {
            namespace: self.name.clone(),
        };
        Ok(self
            .client
            .cache()
            .flush_namespace(req)
            .await?
            .into_inner()
            .sequence)
    }
}

fn get_result(resp: v1::GetResponse) -> Result<GetResult> {
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

fn unknown_outcome(call: &str, value: i32) -> Error {
    Error::UnexpectedResponse(format!("{call} answered unknown outcome {value}"))
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
        };
        assert_eq!(get_result(miss).unwrap(), GetResult::Miss);
    }

    #[test]
    fn malformed_get_responses_are_errors_not_panics() {
        let hit_without_entry = v1::GetResponse {
            outcome: v1::GetOutcome::Hit as i32,
            entry: None,
        };
        assert!(matches!(
            get_result(hit_without_entry),
            Err(Error::UnexpectedResponse(_))
        ));
        let unknown = v1::GetResponse {
            outcome: 99,
            entry: None,
        };
        assert!(matches!(
            get_result(unknown),
            Err(Error::UnexpectedResponse(_))
        ));
    }
}
