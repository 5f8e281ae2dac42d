//! The Lua scripts of the Redis store. Every write is one script, so the condition check, the
//! version bump, lease revocation, the namespace sequence and the event are one atomic step.
//!
//! Every key a script reads or writes is declared in `KEYS`, never built from `ARGV` or from a
//! stored value inside the script (Redis ACLs check each call, and the declared keys are what a
//! reader of the script and a Redis Cluster rely on). The one key set the caller cannot know
//! beforehand is the tag marks of the entry already stored, which the visibility rule reads: the
//! caller declares the tags it expects, and when the entry has others the script changes nothing
//! and answers `{'tags', {tag…}}`, so the caller calls again declaring those
//! (`RedisStore::invoke_tagged`). Pub/sub channels are arguments, as `PUBLISH` wants.

use redis::Script;

/// Lua helpers shared by the scripts: big-endian u64 read/write at the codec's offsets, key
/// escaping as in `keys::escape`, and the visibility rule (born >= flush mark and >= every tag mark).
pub(super) const LUA_PRELUDE: &str = r#"
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
-- Takes the namespace's next sequence; returns it and the id of its run. When `seq` starts
-- over (INCR answers 1) while the run id survives, the `seq` key alone was lost (evicted or
-- deleted) and marks of the old run may remain: the new run starts from the clock (µs since the
-- epoch), above any sequence the old run can have reached (a Redis takes far fewer than one
-- write per µs), so those marks hide nothing new. Any new run gets a new id (the clock too),
-- which tells every replica to drop what it cached for the namespace and resync.
local function next_seq(seq_key, run_key)
  local seq = redis.call('INCR', seq_key)
  local run = redis.call('GET', run_key)
  if seq == 1 or not run then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    if seq == 1 and run then
      seq = now
      redis.call('SET', seq_key, num(seq))
    end
    run = num(now)
    redis.call('SET', run_key, run)
  end
  return seq, run
end
-- The tags of an entry blob (read at the codec's offsets; a short blob yields the tags it holds).
local function tags_of(blob)
  local tags = {}
  local n = string.byte(blob, 27) * 256 + string.byte(blob, 28)
  local pos = 29
  for i = 1, n do
    if pos + 1 > string.len(blob) then break end
    local len = string.byte(blob, pos) * 256 + string.byte(blob, pos + 1)
    tags[i] = string.sub(blob, pos + 2, pos + 1 + len)
    pos = pos + 2 + len
  end
  return tags
end
-- Whether `tags` are exactly the tags whose mark keys are declared in KEYS[first .. first + n - 1].
local function declared(tags, prefix, first, n)
  if #tags ~= n then return false end
  for i, tag in ipairs(tags) do
    if KEYS[first + i - 1] ~= prefix .. 'tag:' .. esc(tag) then return false end
  end
  return true
end
-- Whether an entry is visible: born >= the flush mark (`flush_key`) and >= the mark of each of
-- its tags, whose keys must be the declared KEYS[first .. first + n - 1]. Returns nil and the
-- entry's tags when they are other tags: the caller answers `{'tags', tags}` unchanged.
local function visible(blob, flush_key, prefix, first, n)
  if not blob then return false end
  local born = u64(blob, 11)
  local flush = tonumber(redis.call('GET', flush_key) or '0')
  if born < flush then return false end
  local tags = tags_of(blob)
  if not declared(tags, prefix, first, n) then return nil, tags end
  for i = first, first + n - 1 do
    local m = redis.call('GET', KEYS[i])
    if m and born < tonumber(m) then return false end
  end
  return true
end
-- Records the longest entry lifetime (ms) ever written in the namespace (at `life_key`), so
-- InvalidateTags keeps its marks at least that long whichever replica (and policy) wrote the entry.
local function note_life(life_key, px)
  if tonumber(redis.call('GET', life_key) or '0') < tonumber(px) then
    redis.call('SET', life_key, px)
  end
end
"#;

/// KEYS: entry…; ARGV[1]: the most bytes to return (0: no limit). Returns value, pttl pairs, or
/// only the total size (an integer) when the entries together exceed the limit: sizes are
/// checked with `STRLEN` before any value is read, so a refused batch builds no large reply.
pub(super) const READ: &str = r#"
local limit = tonumber(ARGV[1] or '0')
if limit > 0 then
  local total = 0
  for _, k in ipairs(KEYS) do
    total = total + redis.call('STRLEN', k)
    if total > limit then return total end
  end
end
local out = {}
for i, k in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', k)
  out[2 * i] = redis.call('PTTL', k)
end
return out
"#;

/// KEYS: entry, lease, seq, run, flush, longest lifetime, tag marks of the stored entry… (for a
/// condition only). ARGV: meta prefix, channel, blob, px, condition ('' | 'absent' | 'version'),
/// expected version, key.
/// Returns {0, version, seq} stored, {1, current} version mismatch, {2, current} exists,
/// {'tags', {tag…}} when a condition needs tag marks other than the declared ones.
pub(super) const SET: &str = r#"
local cur = redis.call('GET', KEYS[1])
local curv = 0
if ARGV[5] ~= '' then
  local vis, tags = visible(cur, KEYS[5], ARGV[1], 7, #KEYS - 6)
  if vis == nil then return {'tags', tags} end
  if vis then curv = u64(cur, 3) end
  if ARGV[5] == 'absent' and vis then return {2, curv} end
  if ARGV[5] == 'version' and num(curv) ~= ARGV[6] then return {1, curv} end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local prev = 0
if cur then prev = u64(cur, 3) end
local ver = math.max(prev + 1, now)
local seq, run = next_seq(KEYS[3], KEYS[4])
local blob = string.sub(ARGV[3], 1, 2) .. be64(ver) .. be64(seq) .. string.sub(ARGV[3], 19)
redis.call('SET', KEYS[1], blob, 'PX', ARGV[4])
note_life(KEYS[6], ARGV[4])
revoke(KEYS[2])
redis.call('PUBLISH', ARGV[2], run .. '\n' .. num(seq) .. '\nK\n' .. num(ver) .. '\n' .. ARGV[7])
return {0, ver, seq}
"#;

/// KEYS: entry, lease, seq, run, flush, tag marks of the stored entry…. ARGV: meta prefix,
/// channel, expected version ('' for none), key.
/// Returns {0, old version, seq} deleted, {1, current} mismatch, {2, 0, seq} nothing visible,
/// {'tags', {tag…}} when the stored entry's tags are not the declared ones.
pub(super) const DELETE: &str = r#"
local cur = redis.call('GET', KEYS[1])
local vis, tags = visible(cur, KEYS[5], ARGV[1], 6, #KEYS - 5)
if vis == nil then return {'tags', tags} end
local curv = 0
if vis then curv = u64(cur, 3) end
if ARGV[3] ~= '' and num(curv) ~= ARGV[3] then return {1, curv} end
redis.call('DEL', KEYS[1])
revoke(KEYS[2])
local seq, run = next_seq(KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[2], run .. '\n' .. num(seq) .. '\nK\n0\n' .. ARGV[4])
if vis then return {0, curv, seq} end
return {2, 0, seq}
"#;

/// KEYS: entry, lease, seq, flush, tag marks of the stored entry…. ARGV: meta prefix, token,
/// lease ttl ms.
/// Returns {0, born} granted, {1} a fresh visible entry exists, {2, lease pttl} held by another,
/// {'tags', {tag…}} when a fresh stored entry's tags are not the declared ones.
pub(super) const ACQUIRE_LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local pttl = redis.call('PTTL', KEYS[1])
  if pttl > u64(cur, 19) then
    local vis, tags = visible(cur, KEYS[4], ARGV[1], 5, #KEYS - 4)
    if vis == nil then return {'tags', tags} end
    if vis then return {1} end
  end
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

/// KEYS: entry, lease, seq, run, flush, longest lifetime, tag marks of the filled entry….
/// ARGV: meta prefix, channel, token, blob, px, key.
/// Returns {0, version, seq, born} stored, {1} revoked, {2} expired, {'tags', {tag…}} when the
/// blob's tags are not the declared ones.
pub(super) const FILL: &str = r#"
local l = redis.call('GET', KEYS[2])
if not l then return {2} end
local tok, born, rev = string.match(l, '^([^|]*)|([^|]*)|(.*)$')
if tok ~= ARGV[3] then
  if rev == ARGV[3] then return {1} end
  return {2}
end
born = tonumber(born)
local probe = string.sub(ARGV[4], 1, 10) .. be64(born) .. string.sub(ARGV[4], 19)
local vis, tags = visible(probe, KEYS[5], ARGV[1], 7, #KEYS - 6)
if vis == nil then return {'tags', tags} end
if not vis then
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
note_life(KEYS[6], ARGV[5])
redis.call('DEL', KEYS[2])
local seq, run = next_seq(KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[2], run .. '\n' .. num(seq) .. '\nK\n' .. num(ver) .. '\n' .. ARGV[6])
return {0, ver, seq, born}
"#;

/// KEYS: lease. ARGV: token, lease channel, key. Returns 1 released, 0 not held.
pub(super) const RELEASE_LEASE: &str = r#"
local l = redis.call('GET', KEYS[1])
if not l then return 0 end
if string.match(l, '^([^|]*)|') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"#;

/// KEYS: lock, fence. ARGV: token, ttl ms. Returns {1, fence} acquired, {0, pttl} held.
pub(super) const ACQUIRE_LOCK: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('INCR', KEYS[2])}
end
return {0, redis.call('PTTL', KEYS[1])}
"#;

/// KEYS: lock. ARGV: token, ttl ms. Returns 1 renewed, 0 not held.
pub(super) const RENEW_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"#;

/// KEYS: lock. ARGV: token, lock channel, name. Returns 1 released, 0 not held.
pub(super) const RELEASE_LOCK: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], ARGV[3])
  return 1
end
return 0
"#;

/// KEYS: seq, run, tag marks…, longest lifetime. ARGV: channel, mark ttl ms, raw tags… (same
/// order as KEYS[3..]), lease allowance ms. A mark lives for the caller's mark ttl or for the
/// longest lifetime any replica wrote plus the lease allowance, whichever is longer.
pub(super) const INVALIDATE_TAGS: &str = r#"
local seq, run = next_seq(KEYS[1], KEYS[2])
local life = tonumber(redis.call('GET', KEYS[#KEYS]) or '0') + tonumber(ARGV[#ARGV])
local ttl = num(math.max(tonumber(ARGV[2]), life))
for i = 3, #KEYS - 1 do redis.call('SET', KEYS[i], num(seq), 'PX', ttl) end
local tags = {}
for i = 3, #ARGV - 1 do tags[#tags + 1] = ARGV[i] end
redis.call('PUBLISH', ARGV[1], run .. '\n' .. num(seq) .. '\nT\n' .. table.concat(tags, '\n'))
return seq
"#;

/// KEYS: seq, flush, run. ARGV: channel.
pub(super) const FLUSH: &str = r#"
local seq, run = next_seq(KEYS[1], KEYS[3])
redis.call('SET', KEYS[2], num(seq))
redis.call('PUBLISH', ARGV[1], run .. '\n' .. num(seq) .. '\nF')
return seq
"#;

/// KEYS: entry, seq, flush, tag marks of the stored entry… (ARGV[2] of them), marks of extra
/// tags… (the tags of the replica's L1 copy). ARGV: meta prefix, number of entry tag marks.
/// Returns {blob or nil, pttl, seq, flush, {marks of the entry's tags}, {marks of extra tags}},
/// or {'tags', {tag…}} when the stored entry's tags are not the declared ones. A blob that is
/// not an entry of this codec has no tags.
pub(super) const INSPECT: &str = r#"
local blob = redis.call('GET', KEYS[1])
local pttl = redis.call('PTTL', KEYS[1])
local seq = tonumber(redis.call('GET', KEYS[2]) or '0')
local flush = tonumber(redis.call('GET', KEYS[3]) or '0')
local n = tonumber(ARGV[2])
local tags = {}
if blob and string.len(blob) >= 28 and string.byte(blob, 1) == 1 then tags = tags_of(blob) end
if not declared(tags, ARGV[1], 4, n) then return {'tags', tags} end
local function mark(i) return tonumber(redis.call('GET', KEYS[i]) or '0') end
local marks = {}
for i = 1, n do marks[i] = mark(3 + i) end
local extra = {}
for i = 4 + n, #KEYS do extra[#extra + 1] = mark(i) end
return {blob, pttl, seq, flush, marks, extra}
"#;

/// The scripts, built once per store (their SHA1 is computed here).
pub(super) struct Scripts {
    pub acquire_lease: Script,
    pub fill: Script,
    pub release_lease: Script,
    pub acquire_lock: Script,
    pub renew_lock: Script,
    pub release_lock: Script,
    pub read: Script,
    pub set: Script,
    pub delete: Script,
    pub invalidate_tags: Script,
    pub flush: Script,
    pub inspect: Script,
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
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
            inspect: with_prelude(INSPECT),
        }
    }
}

impl Scripts {
    /// Every script with its name, for tests that check all of them ran.
    pub fn all(&self) -> [(&'static str, &Script); 12] {
        [
            ("acquire_lease", &self.acquire_lease),
            ("fill", &self.fill),
            ("release_lease", &self.release_lease),
            ("acquire_lock", &self.acquire_lock),
            ("renew_lock", &self.renew_lock),
            ("release_lock", &self.release_lock),
            ("read", &self.read),
            ("set", &self.set),
            ("delete", &self.delete),
            ("invalidate_tags", &self.invalidate_tags),
            ("flush", &self.flush),
            ("inspect", &self.inspect),
        ]
    }
}

/// Builds a script with the shared Lua helpers (`u64`, `be64`, `esc`, `num`, `visible`…) in front.
fn with_prelude(body: &str) -> Script {
    Script::new(&format!("{LUA_PRELUDE}\n{body}"))
}
