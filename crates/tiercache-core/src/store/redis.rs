//! The shared tier: Redis.
//!
//! Every write is one Lua script, so the condition check, the version bump, lease revocation, the
//! namespace sequence and the event are one atomic step. Reads are one script too (value and
//! remaining lifetime read together), so a reader never pairs a value with another value's TTL.
//!
//! Scripts that touch both an entry and its namespace's sequence span two hash slots; that is fine
//! on a standalone Redis (the supported deployment today). See docs/architecture.md for the split
//! a Redis Cluster deployment needs.
//!
//! Every call runs in a `redis` tracing span (OpenTelemetry database client conventions) and is
//! reported to the [`RedisObserver`] the server installed, which turns it into metrics. The core
//! itself records nothing and knows no metrics library.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Value;
use tracing::Instrument;

pub use super::calls::{classify, error_type, RedisObserver, RedisOp, ERROR_TYPES};
use super::outcome::{LeaseGrant, StoreDelete, StoreFill, StoreSet, StoredEntry};
use super::scripts::Scripts;
use crate::codec::{self, EntryData};
use crate::error::CoreError;
use crate::keys::{KeySpace, NamespaceKeys};
use crate::types::WriteCondition;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// The prefix of every key and channel name (`redis.key_prefix`), assumed valid
    /// ([`crate::keys::validate_key_prefix`]).
    pub key_prefix: String,
}

/// TCP keepalive on every Redis connection: first probe after 10 s idle, then every 5 s, dead
/// after 3 unanswered (about 25 s). The subscriber is also pinged every
/// `SUBSCRIBER_PING_INTERVAL` (`bus.rs`); keepalive catches a half-open connection that
/// nothing writes to, which a ping-less idle connection would never notice.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_RETRIES: u32 = 3;

/// Returns `client` with TCP keepalive on (see [`KEEPALIVE_IDLE`]).
fn with_keepalive(client: redis::Client) -> Result<redis::Client, CoreError> {
    use redis::io::tcp::socket2::TcpKeepalive;
    let info = client.get_connection_info().clone();
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let tcp = info.tcp_settings().clone().set_keepalive(keepalive);
    redis::Client::open(info.set_tcp_settings(tcp))
        .map_err(|e| CoreError::Unavailable(format!("bad redis url: {e}")))
}

/// The Redis tier: a multiplexed, auto-reconnecting connection and the scripts.
pub struct RedisStore {
    client: redis::Client,
    key_space: KeySpace,
    conn: ConnectionManager,
    scripts: Scripts,
    options: RedisOptions,
    observer: OnceLock<Arc<dyn RedisObserver>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.options.url)
            .finish()
    }
}

fn int(v: &Value) -> Result<u64, CoreError> {
    match v {
        Value::Int(i) => Ok(u64::try_from(*i).unwrap_or(0)),
        other => Err(CoreError::unexpected_reply(other)),
    }
}

fn ints_signed(v: Value) -> Result<Vec<i64>, CoreError> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|v| match v {
                Value::Int(i) => Ok(*i),
                other => Err(CoreError::unexpected_reply(other)),
            })
            .collect(),
        other => Err(CoreError::unexpected_reply(other)),
    }
}

fn ints(v: Value) -> Result<Vec<u64>, CoreError> {
    match v {
        Value::Array(items) => items.iter().map(int).collect(),
        other => Err(CoreError::unexpected_reply(other)),
    }
}

impl RedisStore {
    /// Connects to Redis; fails if it does not answer within the connect timeout.
    pub async fn connect(options: RedisOptions) -> Result<RedisStore, CoreError> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| CoreError::Unavailable(format!("bad redis url: {e}")))?;
        let client = with_keepalive(client)?;
        let key_space = KeySpace::new(
            &options.key_prefix,
            client.get_connection_info().redis_settings().db(),
        );
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            options.connect_timeout,
            ConnectionManager::new_with_config(client.clone(), config),
        )
        .await
        .map_err(|_| CoreError::Unavailable("timed out connecting to redis".into()))??;
        Ok(RedisStore {
            client,
            key_space,
            conn,
            scripts: Scripts::new(),
            options,
            observer: OnceLock::new(),
        })
    }

    /// Installs the observer every later call reports to; only the first one is kept.
    pub fn set_observer(&self, observer: Arc<dyn RedisObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Runs one Redis call in its span and reports it to the observer.
    async fn call<T>(
        &self,
        op: RedisOp,
        f: impl Future<Output = Result<T, CoreError>>,
    ) -> Result<T, CoreError> {
        let span = tracing::info_span!(
            "redis",
            otel.name = op.name,
            otel.kind = "client",
            db.system.name = "redis",
            db.operation.name = op.command,
            tiercache.redis.operation = op.name,
            error.type = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let start = Instant::now();
        let r = f.instrument(span.clone()).await;
        if let Err(e) = &r {
            span.record("error.type", error_type(e));
            span.record("otel.status_code", "ERROR");
        }
        if let Some(o) = self.observer.get() {
            o.record(op, start.elapsed(), r.as_ref().err());
        }
        r
    }

    /// Runs a script invocation on the shared connection, in its span, reported to the observer.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        op: RedisOp,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CoreError> {
        let mut conn = self.conn.clone();
        self.call(op, async { Ok(inv.invoke_async(&mut conn).await?) })
            .await
    }

    /// Runs a command on the shared connection, in its span, reported to the observer.
    async fn query<T: redis::FromRedisValue>(
        &self,
        op: RedisOp,
        cmd: &redis::Cmd,
    ) -> Result<T, CoreError> {
        let mut conn = self.conn.clone();
        self.call(op, async { Ok(cmd.query_async(&mut conn).await?) })
            .await
    }

    /// The client, for the subscription connection.
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection options.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The deployment's key and channel names.
    pub fn key_space(&self) -> &KeySpace {
        &self.key_space
    }

    /// Reads entries with their remaining lifetime, in key order; refuses
    /// ([`CoreError::ReplyTooLarge`]) when their stored size exceeds `max_bytes`, before reading
    /// any value.
    pub async fn read(
        &self,
        keys: &NamespaceKeys,
        user_keys: &[&str],
        max_bytes: Option<u64>,
    ) -> Result<Vec<Option<StoredEntry>>, CoreError> {
        let mut inv = self.scripts.read.prepare_invoke();
        for k in user_keys {
            inv.key(keys.entry(k));
        }
        // 0 means no limit to the script; a limit of 0 bytes still refuses any entry.
        inv.arg(max_bytes.map_or(0, |b| b.max(1)));
        let reply: Value = self.invoke(RedisOp::READ, &inv).await?;
        let items = match reply {
            Value::Array(items) => items,
            Value::Int(_) => {
                return Err(CoreError::ReplyTooLarge {
                    limit: max_bytes.unwrap_or(0),
                })
            }
            other => return Err(CoreError::unexpected_reply(other)),
        };
        let mut out = Vec::with_capacity(user_keys.len());
        let mut it = items.into_iter();
        for k in user_keys {
            let (blob, pttl) = (it.next(), it.next());
            match (blob, pttl) {
                (Some(Value::BulkString(b)), Some(Value::Int(ms))) => {
                    let data = codec::decode(Bytes::from(b)).map_err(|e| CoreError::Corrupt {
                        key: (*k).to_string(),
                        reason: e.to_string(),
                    })?;
                    // A key without expiry (-1) was not written by us; treat it as long-lived.
                    let remaining = if ms < 0 {
                        Duration::from_secs(u32::MAX as u64)
                    } else {
                        Duration::from_millis(ms as u64)
                    };
                    out.push(Some(StoredEntry { data, remaining }));
                }
                _ => out.push(None),
            }
        }
        Ok(out)
    }

    /// Writes an entry whose version and born sequence the script assigns.
    pub async fn set(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        blob: Bytes,
        lifetime: Duration,
        condition: WriteCondition,
    ) -> Result<StoreSet, CoreError> {
        let (cond, expected) = match condition {
            WriteCondition::None => ("", String::new()),
            WriteCondition::IfAbsent => ("absent", String::new()),
            WriteCondition::IfVersion(v) => ("version", v.to_string()),
        };
        let px = lifetime.as_millis().max(1) as u64;
        let mut inv = self.scripts.set.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .key(&keys.run)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(blob.as_ref())
            .arg(px)
            .arg(cond)
            .arg(expected)
            .arg(key);
        let reply: Value = self.invoke(RedisOp::SET, &inv).await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, version, sequence] => StoreSet::Stored {
                version: *version,
                sequence: *sequence,
            },
            [1, current] => StoreSet::VersionMismatch { current: *current },
            [2, current] => StoreSet::Exists { current: *current },
            other => return Err(CoreError::unexpected_reply(("set", other))),
        })
    }

    /// Deletes an entry and revokes its lease.
    pub async fn delete(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<StoreDelete, CoreError> {
        let mut inv = self.scripts.delete.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .key(&keys.run)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(if_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(key);
        let reply: Value = self.invoke(RedisOp::DELETE, &inv).await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, _, sequence] => StoreDelete::Deleted {
                sequence: *sequence,
            },
            [1, current] => StoreDelete::VersionMismatch { current: *current },
            [2, _, sequence] => StoreDelete::NotFound {
                sequence: *sequence,
            },
            other => return Err(CoreError::unexpected_reply(("delete", other))),
        })
    }

    /// Reads the namespace sequence and flush mark.
    pub async fn namespace_marks(&self, keys: &NamespaceKeys) -> Result<(u64, u64), CoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys.seq).arg(&keys.flush);
        let (seq, flush): (Option<u64>, Option<u64>) =
            self.query(RedisOp::NAMESPACE_MARKS, &cmd).await?;
        Ok((seq.unwrap_or(0), flush.unwrap_or(0)))
    }

    /// Reads what a replica syncs a namespace from: its sequence, flush mark and run id (0 for
    /// a namespace without a sequence yet), in one round trip.
    pub async fn namespace_sync(&self, keys: &NamespaceKeys) -> Result<(u64, u64, u64), CoreError> {
        let mut cmd = redis::cmd("MGET");
        cmd.arg(&keys.seq).arg(&keys.flush).arg(&keys.run);
        let (seq, flush, run): (Option<u64>, Option<u64>, Option<u64>) =
            self.query(RedisOp::NAMESPACE_MARKS, &cmd).await?;
        Ok((seq.unwrap_or(0), flush.unwrap_or(0), run.unwrap_or(0)))
    }

    /// Reads the sequence and run id of each namespace, in order, in one round trip (the
    /// periodic check of the bus).
    pub async fn sequences(
        &self,
        namespaces: &[&NamespaceKeys],
    ) -> Result<Vec<(u64, u64)>, CoreError> {
        if namespaces.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for k in namespaces {
            cmd.arg(&k.seq).arg(&k.run);
        }
        let values: Vec<Option<u64>> = self.query(RedisOp::SEQUENCE_CHECK, &cmd).await?;
        Ok(values
            .chunks(2)
            .map(|c| (c[0].unwrap_or(0), c.get(1).copied().flatten().unwrap_or(0)))
            .collect())
    }

    /// Reads Redis's `maxmemory-policy`; `None` when `CONFIG GET` is refused (managed Redis
    /// services often rename or disable it).
    pub async fn maxmemory_policy(&self) -> Option<String> {
        let mut cmd = redis::cmd("CONFIG");
        cmd.arg("GET").arg("maxmemory-policy");
        let mut conn = self.conn.clone();
        let reply: Vec<String> = cmd.query_async(&mut conn).await.ok()?;
        reply.get(1).cloned()
    }

    /// Reads the invalidation marks of tags (0 for a tag never invalidated).
    pub async fn tag_marks(
        &self,
        keys: &NamespaceKeys,
        tags: &[&str],
    ) -> Result<Vec<u64>, CoreError> {
        if tags.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for t in tags {
            cmd.arg(keys.tag(t));
        }
        let marks: Vec<Option<u64>> = self.query(RedisOp::TAG_MARKS, &cmd).await?;
        Ok(marks.into_iter().map(|m| m.unwrap_or(0)).collect())
    }

    /// Takes a new sequence and marks every tag with it; returns the sequence. Each mark lives
    /// `mark_ttl`, or longer if an entry of the namespace was ever written with a longer
    /// lifetime (plus `lease_allowance`), whichever replica wrote it.
    pub async fn invalidate_tags(
        &self,
        keys: &NamespaceKeys,
        tags: &[String],
        mark_ttl: Duration,
        lease_allowance: Duration,
    ) -> Result<u64, CoreError> {
        let mut inv = self.scripts.invalidate_tags.prepare_invoke();
        inv.key(&keys.seq).key(&keys.run);
        for t in tags {
            inv.key(keys.tag(t));
        }
        inv.key(keys.lifetime());
        inv.arg(&keys.channel)
            .arg(mark_ttl.as_millis().max(1) as u64);
        for t in tags {
            inv.arg(t);
        }
        inv.arg(lease_allowance.as_millis() as u64);
        let seq: u64 = self.invoke(RedisOp::INVALIDATE_TAGS, &inv).await?;
        Ok(seq)
    }

    /// Takes a new sequence and sets the namespace flush mark to it; returns the sequence.
    pub async fn flush(&self, keys: &NamespaceKeys) -> Result<u64, CoreError> {
        let mut inv = self.scripts.flush.prepare_invoke();
        inv.key(&keys.seq)
            .key(&keys.flush)
            .key(&keys.run)
            .arg(&keys.channel);
        let seq: u64 = self.invoke(RedisOp::FLUSH, &inv).await?;
        Ok(seq)
    }

    /// Asks for the lease on a key; `token` holds it if granted.
    pub async fn acquire_lease(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<LeaseGrant, CoreError> {
        let mut inv = self.scripts.acquire_lease.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .arg(&keys.meta_prefix)
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64);
        let reply: Value = self.invoke(RedisOp::ACQUIRE_LEASE, &inv).await?;
        let r = ints_signed(reply)?;
        Ok(match r.as_slice() {
            [0, born] => LeaseGrant::Granted {
                born: u64::try_from(*born).unwrap_or(0),
            },
            [1] => LeaseGrant::FreshEntryExists,
            [2, pttl] => LeaseGrant::Held {
                remaining: Duration::from_millis(u64::try_from(*pttl).unwrap_or(0)),
            },
            other => return Err(CoreError::unexpected_reply(("lease", other))),
        })
    }

    /// Stores a value computed under a lease.
    pub async fn fill(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        token: &str,
        blob: Bytes,
        lifetime: Duration,
    ) -> Result<StoreFill, CoreError> {
        let mut inv = self.scripts.fill.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .key(&keys.run)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(token)
            .arg(blob.as_ref())
            .arg(lifetime.as_millis().max(1) as u64)
            .arg(key);
        let reply: Value = self.invoke(RedisOp::FILL, &inv).await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, version, sequence, born] => StoreFill::Stored {
                version: *version,
                sequence: *sequence,
                born: *born,
            },
            [1] => StoreFill::Revoked,
            [2] => StoreFill::Expired,
            other => return Err(CoreError::unexpected_reply(("fill", other))),
        })
    }

    /// Gives a lease back; returns whether `token` held it.
    pub async fn release_lease(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        let mut inv = self.scripts.release_lease.prepare_invoke();
        inv.key(keys.lease(key))
            .arg(token)
            .arg(&keys.lease_channel)
            .arg(key);
        let released: i64 = self.invoke(RedisOp::RELEASE_LEASE, &inv).await?;
        Ok(released == 1)
    }

    /// Reads the lease on a key: `(token, born, remaining)`; the token is empty for a tombstone.
    pub async fn lease_info(
        &self,
        keys: &NamespaceKeys,
        key: &str,
    ) -> Result<Option<(String, u64, Duration)>, CoreError> {
        let mut conn = self.conn.clone();
        let (value, pttl): (Option<String>, i64) = self
            .call(RedisOp::LEASE_INFO, async {
                Ok(redis::pipe()
                    .get(keys.lease(key))
                    .pttl(keys.lease(key))
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(value.and_then(|v| {
            let mut parts = v.splitn(3, '|');
            let token = parts.next()?.to_string();
            let born = parts.next()?.parse().ok()?;
            Some((token, born, Duration::from_millis(pttl.max(0) as u64)))
        }))
    }

    /// Tries to take a lock once: `Ok(Ok(fence))` acquired, `Ok(Err(remaining))` held.
    pub async fn acquire_lock(
        &self,
        keys: &NamespaceKeys,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<Result<u64, Duration>, CoreError> {
        let mut inv = self.scripts.acquire_lock.prepare_invoke();
        inv.key(keys.lock(name))
            .key(keys.fence(name))
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64);
        let reply: Value = self.invoke(RedisOp::ACQUIRE_LOCK, &inv).await?;
        let r = ints_signed(reply)?;
        Ok(match r.as_slice() {
            [1, fence] => Ok(u64::try_from(*fence).unwrap_or(0)),
            [0, pttl] => Err(Duration::from_millis(u64::try_from(*pttl).unwrap_or(0))),
            other => return Err(CoreError::unexpected_reply(("lock", other))),
        })
    }

    /// Extends a lock held by `token`; returns whether it was held.
    pub async fn renew_lock(
        &self,
        keys: &NamespaceKeys,
        name: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<bool, CoreError> {
        let mut inv = self.scripts.renew_lock.prepare_invoke();
        inv.key(keys.lock(name))
            .arg(token)
            .arg(ttl.as_millis().max(1) as u64);
        let renewed: i64 = self.invoke(RedisOp::RENEW_LOCK, &inv).await?;
        Ok(renewed == 1)
    }

    /// Frees a lock held by `token`; returns whether it was held.
    pub async fn release_lock(
        &self,
        keys: &NamespaceKeys,
        name: &str,
        token: &str,
    ) -> Result<bool, CoreError> {
        let mut inv = self.scripts.release_lock.prepare_invoke();
        inv.key(keys.lock(name))
            .arg(token)
            .arg(&keys.lock_channel)
            .arg(name);
        let released: i64 = self.invoke(RedisOp::RELEASE_LOCK, &inv).await?;
        Ok(released == 1)
    }

    /// Sends PING; used by health checks.
    pub async fn ping(&self) -> Result<(), CoreError> {
        let _: String = self.query(RedisOp::PING, &redis::cmd("PING")).await?;
        Ok(())
    }

    /// The background health check (`crate::degraded`): a `PING` on the data connection,
    /// reported as its own operation so it can be told apart from the probe and the data path.
    pub async fn health_check(&self) -> Result<(), CoreError> {
        let _: String = self
            .query(RedisOp::HEALTH_CHECK, &redis::cmd("PING"))
            .await?;
        Ok(())
    }
}

/// One atomic read of Redis for Inspect.
#[derive(Debug)]
pub struct InspectSnapshot {
    /// The entry and its remaining lifetime, visible or not.
    pub entry: Option<(EntryData, Duration)>,
    pub sequence: u64,
    pub flush: u64,
    /// The marks of the entry's tags, in its tag order.
    pub entry_marks: Vec<u64>,
    /// The marks of `extra_tags`, in their order.
    pub extra_marks: Vec<u64>,
}

impl RedisStore {
    /// Reads, in one atomic step, the entry of `key` with its remaining lifetime, the namespace
    /// sequence and flush mark, the marks of the entry's tags and those of `extra_tags`.
    pub async fn inspect(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        extra_tags: &[String],
    ) -> Result<InspectSnapshot, CoreError> {
        let mut inv = self.scripts.inspect.prepare_invoke();
        inv.key(keys.entry(key))
            .key(&keys.seq)
            .key(&keys.flush)
            .arg(&keys.meta_prefix);
        for t in extra_tags {
            inv.arg(t);
        }
        let reply: Value = self.invoke(RedisOp::INSPECT, &inv).await?;
        let bad = |what: &str| CoreError::unexpected_reply(("inspect", what));
        let Value::Array(items) = reply else {
            return Err(bad("not an array"));
        };
        let [blob, pttl, seq, flush, marks, extra]: [Value; 6] =
            items.try_into().map_err(|_| bad("wrong length"))?;
        let entry = match (blob, pttl) {
            (Value::BulkString(b), Value::Int(ms)) => {
                let data = codec::decode(Bytes::from(b)).map_err(|e| CoreError::Corrupt {
                    key: key.to_string(),
                    reason: e.to_string(),
                })?;
                // No expiry (-1) means the key was not written by us; treat it as long-lived.
                let remaining = u64::try_from(ms)
                    .map(Duration::from_millis)
                    .unwrap_or(Duration::from_secs(u32::MAX as u64));
                Some((data, remaining))
            }
            _ => None,
        };
        let ints = |v: &Value| match v {
            Value::Array(a) => a.iter().map(int).collect::<Result<Vec<_>, _>>(),
            // Redis turns an empty Lua table into an empty array, but be lenient.
            Value::Nil => Ok(Vec::new()),
            _ => Err(bad("not an array of integers")),
        };
        Ok(InspectSnapshot {
            entry,
            sequence: int(&seq)?,
            flush: int(&flush)?,
            entry_marks: ints(&marks)?,
            extra_marks: ints(&extra)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_connection_has_tcp_keepalive_and_keeps_the_database() {
        let client = redis::Client::open("redis://127.0.0.1:1/3").unwrap();
        let client = with_keepalive(client).unwrap();
        let info = client.get_connection_info();
        assert!(info.tcp_settings().keepalive().is_some());
        assert_eq!(info.redis_settings().db(), 3);
    }
}
