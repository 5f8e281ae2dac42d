//! The shared tier: Redis.
//!
//! Every write is one Lua script, so the condition check, the version bump, lease revocation, the
//! namespace sequence and the event are one atomic step. Reads are one script too (value and
//! remaining lifetime read together), so a reader never pairs a value with another value's TTL.
//!
//! Scripts that touch both an entry and its namespace's sequence span two hash slots; that is fine
//! on a standalone Redis (the supported deployment today). See docs/architecture.md for the split
//! a Redis Cluster deployment needs.

use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};

use crate::codec::{self, EntryData};
use crate::error::CoreError;
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
redis.call('DEL', KEYS[2])
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
redis.call('DEL', KEYS[1], KEYS[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[2], num(seq) .. '\nK\n0\n' .. ARGV[4])
if vis then return {0, curv, seq} end
return {2, 0, seq}
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

struct Scripts {
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
        other => Err(CoreError::Unavailable(format!(
            "unexpected reply from redis: {other:?}"
        ))),
    }
}

fn ints(v: Value) -> Result<Vec<u64>, CoreError> {
    match v {
        Value::Array(items) => items.iter().map(int).collect(),
        other => Err(CoreError::Unavailable(format!(
            "unexpected reply from redis: {other:?}"
        ))),
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
                read: Script::new(READ),
                set: with_prelude(SET),
                delete: with_prelude(DELETE),
                invalidate_tags: with_prelude(INVALIDATE_TAGS),
                flush: with_prelude(FLUSH),
            },
            options,
        })
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
        let reply: Value = inv.invoke_async(&mut self.conn.clone()).await?;
        let Value::Array(items) = reply else {
            return Err(CoreError::Unavailable(format!(
                "unexpected reply from redis: {reply:?}"
            )));
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
        let reply: Value = self
            .scripts
            .set
            .key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(blob.as_ref())
            .arg(px)
            .arg(cond)
            .arg(expected)
            .arg(key)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, version, sequence] => L2SetResult::Stored {
                version: *version,
                sequence: *sequence,
            },
            [1, current] => L2SetResult::VersionMismatch { current: *current },
            [2, current] => L2SetResult::Exists { current: *current },
            other => {
                return Err(CoreError::Unavailable(format!(
                    "unexpected set reply {other:?}"
                )))
            }
        })
    }

    /// Deletes an entry and revokes its lease.
    pub async fn delete(
        &self,
        keys: &NamespaceKeys,
        key: &str,
        if_version: Option<u64>,
    ) -> Result<L2DeleteResult, CoreError> {
        let reply: Value = self
            .scripts
            .delete
            .key(keys.entry(key))
            .key(keys.lease(key))
            .key(&keys.seq)
            .arg(&keys.meta_prefix)
            .arg(&keys.channel)
            .arg(if_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(key)
            .invoke_async(&mut self.conn.clone())
            .await?;
        let r = ints(reply)?;
        Ok(match r.as_slice() {
            [0, _, sequence] => L2DeleteResult::Deleted {
                sequence: *sequence,
            },
            [1, current] => L2DeleteResult::VersionMismatch { current: *current },
            [2, _, sequence] => L2DeleteResult::NotFound {
                sequence: *sequence,
            },
            other => {
                return Err(CoreError::Unavailable(format!(
                    "unexpected delete reply {other:?}"
                )))
            }
        })
    }

    /// Reads the namespace sequence and flush mark.
    pub async fn namespace_marks(&self, keys: &NamespaceKeys) -> Result<(u64, u64), CoreError> {
        let (seq, flush): (Option<u64>, Option<u64>) = redis::cmd("MGET")
            .arg(&keys.seq)
            .arg(&keys.flush)
            .query_async(&mut self.conn.clone())
            .await?;
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
        let marks: Vec<Option<u64>> = cmd.query_async(&mut self.conn.clone()).await?;
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
        let seq: u64 = inv.invoke_async(&mut self.conn.clone()).await?;
        Ok(seq)
    }

    /// Takes a new sequence and sets the namespace flush mark to it; returns the sequence.
    pub async fn flush(&self, keys: &NamespaceKeys) -> Result<u64, CoreError> {
        let seq: u64 = self
            .scripts
            .flush
            .key(&keys.seq)
            .key(&keys.flush)
            .arg(&keys.channel)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(seq)
    }

    /// Sends PING; used by health checks.
    pub async fn ping(&self) -> Result<(), CoreError> {
        let _: String = redis::cmd("PING")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(())
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
