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
use redis::{Script, Value};
use tracing::Instrument;

use crate::codec::{self, EntryData};
use crate::error::{CoreError, RedisErrorClass, RedisReplyError};
use crate::keys::NamespaceKeys;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    pub url: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
}

/// Lua helpers shared by the scripts: big-endian u64 read/write at the codec's offsets, key
/// escaping as in `keys::escape`, and the visibility rule (born >= flush mark and >= every tag mark).
const LUA_PRELUDE: &str = r#"
local function u64(s, i)
  local v = 0
  for j = i, i + 7 do v = v * 256 + string.byte(s, j) end
  return v
end
local function be64(v)
  local t = {}
  for j = 8, 1, -1 do t[j] = string.char(v % 256); v = math.floor(v / 256) end
  return table.concat(t)
end
local function esc(s)
  return (string.gsub(s, '[%%{}]', function(c) return string.format('%%%02X', string.byte(c)) end))
end
local function num(s) return string.format('%.0f', s) end
-- Revokes the lease on a key: the holder's later Fill answers LEASE_REVOKED. The tombstone
-- `|0|<token>` keeps the revoked token until the lease would have expired.
local function revoke(lease_key)
  local l = redis.call('GET', lease_key)
  if not l then return end
  local tok = string.match(l, '^([^|]*)|')
  if tok and tok ~= '' then
    local ttl = redis.call('PTTL', lease_key)
    if ttl > 0 then redis.call('SET', lease_key, '|0|' .. tok, 'PX', ttl) end
  end
end
local function visible(blob, prefix)
  if not blob then return false end
  local born = u64(blob, 11)
  local flush = tonumber(redis.call('GET', prefix .. 'flush') or '0')
  if born < flush then return false end
  local n = string.byte(blob, 27) * 256 + string.byte(blob, 28)
  local pos = 29
  for _ = 1, n do
    local len = string.byte(blob, pos) * 256 + string.byte(blob, pos + 1)
    local tag = string.sub(blob, pos + 2, pos + 1 + len)
    pos = pos + 2 + len
    local m = redis.call('GET', prefix .. 'tag:' .. esc(tag))
    if m and born < tonumber(m) then return false end
  end
  return true
end
"#;

/// KEYS: entry…; returns value, pttl pairs.
const READ: &str = r#"
local out = {}
for i, k in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', k)
  out[2 * i] = redis.call('PTTL', k)
end
return out
"#;

/// KEYS: entry, lease, seq. ARGV: meta prefix, channel, blob, px, condition ('' | 'absent' |
/// 'version'), expected version, key.
/// Returns {0, version, seq} stored, {1, current} version mismatch, {2, current} exists.
const SET: &str = r#"
local cur = redis.call('GET', KEYS[1])
local vis = visible(cur, ARGV[1])
local curv = 0
if vis then curv = u64(cur, 3) end
if ARGV[5] == 'absent' and vis then return {2, curv} end
if ARGV[5] == 'version' and num(curv) ~= ARGV[6] then return {1, curv} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = 0
if cur then prev = u64(cur, 3) end
local ver = math.max(prev + 1, now)
local seq = redis.call('INCR', KEYS[3])
local blob = string.sub(ARGV[3], 1, 2) .. be64(ver) .. be64(seq) .. string.sub(ARGV[3], 19)
redis.call('SET', KEYS[1], blob, 'PX', ARGV[4])
revoke(KEYS[2])
redis.call('PUBLISH', ARGV[2], num(seq) .. '\nK\n' .. num(ver) .. '\n' .. ARGV[7])
return {0, ver, seq}
"#;

/// KEYS: entry, lease, seq. ARGV: meta prefix, channel, expected version ('' for none), key.
/// Returns {0, old version, seq} deleted, {1, current} mismatch, {2, 0, seq} nothing visible.
const DELETE: &str = r#"
local cur = redis.call('GET', KEYS[1])
local vis = visible(cur, ARGV[1])
local curv = 0
if vis then curv = u64(cur, 3) end
if ARGV[3] ~= '' and num(curv) ~= ARGV[3] then return {1, curv} end
redis.call('DEL', KEYS[1])
revoke(KEYS[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], num(seq) .. '\nK\n0\n' .. ARGV[4])
if vis then return {0, curv, seq} end
return {2, 0, seq}
"#;

/// KEYS: entry, lease, seq. ARGV: meta prefix, token, lease ttl ms.
/// Returns {0, born} granted, {1} a fresh visible entry exists, {2, lease pttl} held by another.
const ACQUIRE_LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and visible(cur, ARGV[1]) then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > u64(cur, 19) then return {1} end
end
local l = redis.call('GET', KEYS[2])
local revoked = ''
if l then
  local tok, _, rev = string.match(l, '^([^|]*)|([^|]*)|(.*)$')
  if tok and tok ~= '' then return {2, redis.call('PTTL', KEYS[2])} end
  revoked = rev or ''
end
local seq = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('SET', KEYS[2], ARGV[2] .. '|' .. num(seq) .. '|' .. revoked, 'PX', ARGV[3])
return {0, seq}
"#;

/// KEYS: entry, lease, seq. ARGV: meta prefix, channel, token, blob, px, key.
/// Returns {0, version, seq, born} stored, {1} revoked, {2} expired.
const FILL: &str = r#"
local l = redis.call('GET', KEYS[2])
if not l then return {2} end
local tok, born, rev = string.match(l, '^([^|]*)|([^|]*)|(.*)$')
if tok ~= ARGV[3] then
  if rev == ARGV[3] then return {1} end
  return {2}
end
born = tonumber(born)
local probe = string.sub(ARGV[4], 1, 10) .. be64(born) .. string.sub(ARGV[4], 19)
if not visible(probe, ARGV[1]) then
  redis.call('DEL', KEYS[2])
  return {1}
end
local cur = redis.call('GET', KEYS[1])
local prev = 0
if cur then prev = u64(cur, 3) end
local t = redis.call('TIME')
local ver = math.max(prev + 1, tonumber(t[1]) * 1000000 + tonumber(t[2]))
local blob = string.sub(ARGV[4], 1, 2) .. be64(ver) .. be64(born) .. string.sub(ARGV[4], 19)
redis.call('SET', KEYS[1], blob, 'PX', ARGV[5])
redis.call('DEL', KEYS[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], num(seq) .. '\nK\n' .. num(ver) .. '\n' .. ARGV[6])
return {0, ver, seq, born}
"#;

/// KEYS: lease. ARGV: token, lease channel, key. Returns 1 released, 0 not held.
const RELEASE_LEASE: &str = r#"
local l = redis.call('GET', KEYS[1])
if not l then return 0 end
if string.match(l, '^([^|]*)|') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// KEYS: lock, fence. ARGV: token, ttl ms. Returns {1, fence} acquired, {0, pttl} held.
const ACQUIRE_LOCK: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"#;

/// KEYS: lock. ARGV: token, ttl ms. Returns 1 renewed, 0 not held.
const RENEW_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: lock. ARGV: token, lock channel, name. Returns 1 released, 0 not held.
const RELEASE_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"#;

/// KEYS: seq, tag marks…. ARGV: channel, mark ttl ms, raw tags… (same order as KEYS[2..]).
const INVALIDATE_TAGS: &str = r#"
local seq = redis.call('INCR', KEYS[1])
for i = 2, #KEYS do redis.call('SET', KEYS[i], seq, 'PX', ARGV[2]) end
local tags = {}
for i = 3, #ARGV do tags[#tags + 1] = ARGV[i] end
redis.call('PUBLISH', ARGV[1], num(seq) .. '\nT\n' .. table.concat(tags, '\n'))
return seq
"#;

/// KEYS: seq, flush. ARGV: channel.
const FLUSH: &str = r#"
local seq = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], seq)
redis.call('PUBLISH', ARGV[1], num(seq) .. '\nF')
return seq
"#;

/// A write condition as the scripts see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    None,
    IfAbsent,
    IfVersion(u64),
}

/// What a Set script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2SetResult {
    Stored { version: u64, sequence: u64 },
    VersionMismatch { current: u64 },
    Exists { current: u64 },
}

/// What a lease request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum L2Acquire {
    Granted { born: u64 },
    FreshEntryExists,
    Held { remaining: Duration },
}

/// What a Fill script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2Fill {
    Stored {
        version: u64,
        sequence: u64,
        born: u64,
    },
    Revoked,
    Expired,
}

/// What a Delete script did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L2DeleteResult {
    Deleted { sequence: u64 },
    NotFound { sequence: u64 },
    VersionMismatch { current: u64 },
}

/// An entry read from Redis with its remaining lifetime.
#[derive(Debug, Clone)]
pub struct L2Entry {
    pub data: EntryData,
    /// Time until Redis drops the key (the end of the stale window).
    pub remaining: Duration,
}

/// Receives the duration and result of every Redis call; the server turns them into metrics.
///
/// Called on the request path after each round trip, so it must be cheap and must not block.
pub trait RedisObserver: Send + Sync + 'static {
    /// Records one call: `operation` is one of the names in [`RedisOp`], `error` its failure.
    fn record(&self, operation: RedisOp, elapsed: Duration, error: Option<&CoreError>);
}

/// A kind of Redis call the L2 tier makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisOp {
    /// The tiercache operation (`read`, `set`, `delete`, `namespace_marks`, `tag_marks`,
    /// `invalidate_tags`, `flush`, `acquire_lease`, `fill`, `release_lease`, `lease_info`,
    /// `acquire_lock`, `renew_lock`, `release_lock`, `ping`).
    pub name: &'static str,
    /// The Redis command it sends (`EVALSHA`, `MGET`, `PING`).
    pub command: &'static str,
}

impl RedisOp {
    const READ: RedisOp = RedisOp::script("read");
    const SET: RedisOp = RedisOp::script("set");
    const DELETE: RedisOp = RedisOp::script("delete");
    const INVALIDATE_TAGS: RedisOp = RedisOp::script("invalidate_tags");
    const FLUSH: RedisOp = RedisOp::script("flush");
    const NAMESPACE_MARKS: RedisOp = RedisOp {
        name: "namespace_marks",
        command: "MGET",
    };
    const TAG_MARKS: RedisOp = RedisOp {
        name: "tag_marks",
        command: "MGET",
    };
    const ACQUIRE_LEASE: RedisOp = RedisOp::script("acquire_lease");
    const FILL: RedisOp = RedisOp::script("fill");
    const RELEASE_LEASE: RedisOp = RedisOp::script("release_lease");
    const LEASE_INFO: RedisOp = RedisOp {
        name: "lease_info",
        command: "GET",
    };
    const ACQUIRE_LOCK: RedisOp = RedisOp::script("acquire_lock");
    const RENEW_LOCK: RedisOp = RedisOp::script("renew_lock");
    const RELEASE_LOCK: RedisOp = RedisOp::script("release_lock");
    const PING: RedisOp = RedisOp {
        name: "ping",
        command: "PING",
    };

    const fn script(name: &'static str) -> RedisOp {
        RedisOp {
            name,
            command: "EVALSHA",
        }
    }
}

/// The `error.type` of a failed call.
pub fn error_type(e: &CoreError) -> &'static str {
    match e {
        CoreError::Unavailable(_) => "unavailable",
        CoreError::Redis(_) => "redis_error",
        CoreError::Corrupt { .. } => "corrupt",
        _ => "other",
    }
}

/// Classifies a Redis failure: only "Redis unreachable" (refused, reset, dropped, an I/O error,
/// no answer within the response timeout) is [`CoreError::Unavailable`], which trips degraded
/// mode. An error reply means Redis is there: it becomes [`CoreError::Redis`] with its class and
/// code, and changes no mode.
pub fn classify(e: redis::RedisError) -> CoreError {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        return CoreError::Unavailable(e.to_string());
    }
    let code = match e.kind() {
        redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType => "UNEXPECTED_REPLY",
        _ => e.code().unwrap_or("ERROR"),
    }
    .to_string();
    let class = match code.as_str() {
        "OOM" => RedisErrorClass::OutOfMemory,
        "READONLY" | "LOADING" | "BUSY" | "TRYAGAIN" | "MASTERDOWN" => RedisErrorClass::Transient,
        _ => RedisErrorClass::Internal,
    };
    CoreError::Redis(RedisReplyError {
        class,
        code,
        message: e.to_string(),
    })
}

impl From<redis::RedisError> for CoreError {
    fn from(e: redis::RedisError) -> Self {
        classify(e)
    }
}

struct Scripts {
    acquire_lease: Script,
    fill: Script,
    release_lease: Script,
    acquire_lock: Script,
    renew_lock: Script,
    release_lock: Script,
    read: Script,
    set: Script,
    delete: Script,
    invalidate_tags: Script,
    flush: Script,
}

/// The Redis tier: a multiplexed, auto-reconnecting connection and the scripts.
pub struct L2 {
    client: redis::Client,
    conn: ConnectionManager,
    scripts: Scripts,
    options: RedisOptions,
    observer: OnceLock<Arc<dyn RedisObserver>>,
}

impl std::fmt::Debug for L2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L2")
            .field("url", &self.options.url)
            .finish()
    }
}

fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{LUA_PRELUDE}\n{body}"))
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

impl L2 {
    /// Connects to Redis; fails if it does not answer within the connect timeout.
    pub async fn connect(options: RedisOptions) -> Result<L2, CoreError> {
        let client = redis::Client::open(options.url.as_str())
            .map_err(|e| CoreError::Unavailable(format!("bad redis url: {e}")))?;
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
        Ok(L2 {
            client,
            conn,
            scripts: Scripts {
                acquire_lease: with_prelude(ACQUIRE_LEASE),
                fill: with_prelude(FILL),
                release_lease: Script::new(RELEASE_LEASE),
                acquire_lock: Script::new(ACQUIRE_LOCK),
                renew_lock: Script::new(RENEW_LOCK),
                release_lock: Script::new(RELEASE_LOCK),
                read: Script::new(READ),
                set: with_prelude(SET),
                delete: with_prelude(DELETE),
                invalidate_tags: with_prelude(INVALIDATE_TAGS),
                flush: with_prelude(FLUSH),
            },
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

    /// Reads entries with their remaining lifetime, in key order.
    pub async fn read(
        &self,
        keys: &NamespaceKeys,
        user_keys: &[&str],
    ) -> Result<Vec<Option<L2Entry>>, CoreError> {
        let mut inv = self.scripts.read.prepare_invoke();
        for k in user_keys {
            inv.key(keys.entry(k));
        }
        let reply: Value = self.invoke(RedisOp::READ, &inv).await?;
        let Value::Array(items) = reply else {
            return Err(CoreError::unexpected_reply(reply));
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
                    out.push(Some(L2Entry { data, remaining }));
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
        condition: Condition,
    ) -> Result<L2SetResult, CoreError> {
        let (cond, expected) = match condition {
            Condition::None => ("", String::new()),
            Condition::IfAbsent => ("absent", String::new()),
            Condition::IfVersion(v) => ("version", v.to_string()),
        };
        let px = lifetime.as_millis().max(1) as u64;
        let mut inv = self.scripts.set.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
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
            [0, version, sequence] => L2SetResult::Stored {
                version: *version,
                sequence: *sequence,
            },
            [1, current] => L2SetResult::VersionMismatch { current: *current },
            [2, current] => L2SetResult::Exists { current: *current },
            other => return Err(CoreError::unexpected_reply(("set", other))),
        })
    }

    /// Deletes an entry and revokes its lease.
    pub async fn delete(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<L2DeleteResult, CoreError> {
        let mut inv = self.scripts.delete.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(if_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(key);
        let reply: Value = self.invoke(RedisOp::DELETE, &inv).await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, _, sequence] => L2DeleteResult::Deleted {
                sequence: *sequence,
            },
            [1, current] => L2DeleteResult::VersionMismatch { current: *current },
            [2, _, sequence] => L2DeleteResult::NotFound {
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

    /// Takes a new sequence and marks every tag with it; returns the sequence.
    pub async fn invalidate_tags(
        &self,
        keys: &NamespaceKeys,
        tags: &[String],
        mark_ttl: Duration,
    ) -> Result<u64, CoreError> {
        let mut inv = self.scripts.invalidate_tags.prepare_invoke();
        inv.key(&keys.seq);
        for t in tags {
            inv.key(keys.tag(t));
        }
        inv.arg(&keys.channel)
            .arg(mark_ttl.as_millis().max(1) as u64);
        for t in tags {
            inv.arg(t);
        }
        let seq: u64 = self.invoke(RedisOp::INVALIDATE_TAGS, &inv).await?;
        Ok(seq)
    }

    /// Takes a new sequence and sets the namespace flush mark to it; returns the sequence.
    pub async fn flush(&self, keys: &NamespaceKeys) -> Result<u64, CoreError> {
        let mut inv = self.scripts.flush.prepare_invoke();
        inv.key(&keys.seq).key(&keys.flush).arg(&keys.channel);
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
    ) -> Result<L2Acquire, CoreError> {
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
            [0, born] => L2Acquire::Granted {
                born: u64::try_from(*born).unwrap_or(0),
            },
            [1] => L2Acquire::FreshEntryExists,
            [2, pttl] => L2Acquire::Held {
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
    ) -> Result<L2Fill, CoreError> {
        let mut inv = self.scripts.fill.prepare_invoke();
        inv.key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(token)
            .arg(blob.as_ref())
            .arg(lifetime.as_millis().max(1) as u64)
            .arg(key);
        let reply: Value = self.invoke(RedisOp::FILL, &inv).await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, version, sequence, born] => L2Fill::Stored {
                version: *version,
                sequence: *sequence,
                born: *born,
            },
            [1] => L2Fill::Revoked,
            [2] => L2Fill::Expired,
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
}

impl crate::engine::Cache {
    /// Reports every later Redis call to `observer` (latency and errors); a no-op in
    /// memory-only mode. Lives here rather than in the engine because it is L2 plumbing.
    pub fn observe_redis(&self, observer: Arc<dyn RedisObserver>) {
        if let Some(l2) = &self.inner.l2 {
            l2.set_observer(observer);
        }
    }
}
// ---- access for sibling modules (read-only scripts such as Inspect's live beside their users) ----

impl L2 {
    /// Returns a handle on the shared multiplexed connection.
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }
}

/// Builds a script with the shared Lua helpers (`u64`, `be64`, `esc`, `num`, `visible`) in front.
pub(crate) fn script_with_prelude(body: &str) -> Script {
    with_prelude(body)
}
