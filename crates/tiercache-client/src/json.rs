//! Typed helpers over JSON (feature `json`, on by default). The raw-bytes calls are always
//! there; these only encode and decode with `serde_json`.

use std::future::Future;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, GetOrSetOptions, Namespace, Result, SetOptions, SetResult};

fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Bytes> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| Error::Codec(Box::new(e)))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| Error::Codec(Box::new(e)))
}

impl Namespace {
    /// Reads `key` and decodes its JSON value; `None` on a miss or a negative entry.
    /// A value that is not valid JSON for `T` is [`Error::Codec`].
    pub async fn get_json<T: DeserializeOwned>(&self, key: impl Into<String>) -> Result<Option<T>> {
        match self.get(key).await? {
            Some(e) if !e.absent => decode(&e.value).map(Some),
            _ => Ok(None),
        }
    }

    /// Encodes `value` as JSON and stores it with `opts` (TTLs, tags, condition).
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: impl Into<String>,
        value: &T,
        opts: SetOptions,
    ) -> Result<SetResult> {
        self.set_with(key, encode(value)?, opts).await
    }

    /// [`get_or_set`](Namespace::get_or_set) with JSON values: `f` returns `Ok(Some(value))`,
    /// `Ok(None)` (cached as "does not exist") or an error (returned, never cached).
    pub async fn get_or_set_json<T, F, Fut, E>(
        &self,
        key: impl Into<String>,
        opts: GetOrSetOptions,
        f: F,
    ) -> Result<Option<T>, E>
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: From<Error> + std::fmt::Display + Send + 'static,
    {
        let raw = self
            .get_or_set(key, opts, move || async move {
                match f().await {
                    Ok(Some(v)) => Ok(Some(encode(&v)?)),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        match raw {
            Some(b) => Ok(Some(decode(&b)?)),
            None => Ok(None),
        }
    }
}
