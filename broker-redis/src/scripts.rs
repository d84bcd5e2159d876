//! The Lua scripts: each runs atomically in Redis, so that several broker
//! processes appending, trimming and flushing at once never see half of
//! another's change. Invoked by `EVALSHA` (`redis::Script` loads a script
//! again after a Redis restart emptied its cache).
//!
//! Numbers cross into Lua as doubles: offsets and byte counts are exact up
//! to 2^53. Numbers written back to Redis go through `string.format('%d')`
//! (Lua's own `tostring` would write `1e+15`).

use redis::Script;

/// Appends a batch to a topic's log, deduplicated by idempotency key.
///
/// KEYS: log, next, prefix, bytes, keys, key order. ARGV: the log's
/// incarnation (its id prefix) as `=<prefix>` (the one this process
/// learned: the append is refused unless the log has it) or `+<prefix>`
/// (none learned: a never-used prefix, taken when the log has none yet),
/// the count n, now (ms), the keys' window (ms), the most keys a topic
/// keeps, then n times: published ms, content type (`''` for none, else
/// `'='` and the value), event type (`''` for none), idempotency key
/// (`''` for none), `<fingerprint hex>:<subscribers>`, payload, trace
/// context (`''` for none). The event type is the entry's field `e`, the
/// trace context its field `x`, each left out when none (entries written
/// before them have none either).
///
/// A keyed message whose key the topic remembers within the window (or
/// that an earlier message of the batch has) is not appended: its answer
/// is its first message's. A key remembered with another fingerprint
/// refuses the whole batch, writing nothing. Keys are kept in the `keys`
/// hash and the `key order` sorted set (by published ms), forgotten past
/// the window (at most 1,000 a call) and past the count, oldest first.
///
/// Each entry also carries `s`, the payload bytes ever appended to the
/// log up to and including it (the `bytes` key holds the running total),
/// so that retention finds where to cut by bytes without reading what it
/// drops.
///
/// Then announces the append on the changes channel (ARGV after the
/// messages: the channel, this process's replica id, the topic):
/// `a <replica> <first> <next> <topic>`, when anything was appended.
///
/// Returns `{first offset, the log's prefix, then per message 0 (appended:
/// the next offset from first) or '<offset>:<subscribers>' (a replay)}`;
/// `{-1}` for a reused key; or `false` (nil), writing nothing, when the
/// log's prefix is gone or not the one named: its topic was deleted (and
/// maybe made again) since this process learned it. One INCRBY numbers
/// the whole batch, so that offsets are one dense sequence per topic
/// whoever appends. Refuses (before writing anything) a log whose counter
/// is gone while its stream is not: its offsets would go back.
const APPEND: &str = r"
local n = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 0 and redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('BROKER the log has entries but no counter (evicted?): refusing to number messages again')
end
local prefix = redis.call('GET', KEYS[3])
local mode, named = string.sub(ARGV[1], 1, 1), string.sub(ARGV[1], 2)
if mode == '=' then
  if prefix ~= named then return false end
end
local now, window, max_keys = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local oldest = now - window
local W = 6
local verdicts, batch, fresh = {}, {}, 0
for i = 0, n - 1 do
  local a = W + 7 * i
  local key = ARGV[a + 3]
  local fp, subs = string.match(ARGV[a + 4], '^([^:]*):(.*)$')
  local verdict = 0
  if key ~= '' then
    local first = batch[key]
    if first then
      if first[2] ~= fp then return {-1} end
      verdict = {first[1], subs}
    else
      local kept = redis.call('HGET', KEYS[5], key)
      if kept then
        local kfp, koff, ksubs, kat = string.match(kept, '^([^:]*):([^:]*):([^:]*):(.*)$')
        if tonumber(kat) >= oldest then
          if kfp ~= fp then return {-1} end
          verdict = koff .. ':' .. ksubs
        end
      end
      if verdict == 0 then batch[key] = {i, fp} end
    end
  end
  if verdict == 0 then fresh = fresh + 1 end
  verdicts[i + 1] = verdict
end
if mode == '+' and not prefix then
  prefix = named
  redis.call('SET', KEYS[3], prefix)
end
local first = redis.call('INCRBY', KEYS[2], fresh) - fresh
local size = 0
for i = 0, n - 1 do
  if verdicts[i + 1] == 0 then size = size + #ARGV[W + 7 * i + 5] end
end
local total = redis.call('INCRBY', KEYS[4], string.format('%d', size)) - size
local offsets, at = {}, first
for i = 0, n - 1 do
  if verdicts[i + 1] == 0 then
    local a = W + 7 * i
    local ct, et, key, p = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 5]
    local id = string.format('%d-0', at + 1)
    total = total + #p
    local fields = {'t', ARGV[a], 's', string.format('%d', total)}
    if ct ~= '' then
      fields[#fields + 1] = 'c'
      fields[#fields + 1] = string.sub(ct, 2)
    end
    if et ~= '' then
      fields[#fields + 1] = 'e'
      fields[#fields + 1] = et
    end
    if ARGV[a + 6] ~= '' then
      fields[#fields + 1] = 'x'
      fields[#fields + 1] = ARGV[a + 6]
    end
    fields[#fields + 1] = 'p'
    fields[#fields + 1] = p
    redis.call('XADD', KEYS[1], id, unpack(fields))
    if key ~= '' and max_keys > 0 then
      local fp, subs = string.match(ARGV[a + 4], '^([^:]*):(.*)$')
      redis.call('HSET', KEYS[5], key, string.format('%s:%d:%s:%s', fp, at, subs, ARGV[a]))
      redis.call('ZADD', KEYS[6], ARGV[a], key)
    end
    offsets[i] = at
    at = at + 1
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', '(' .. string.format('%d', oldest), 'LIMIT', 0, 1000)
if #expired > 0 then
  redis.call('HDEL', KEYS[5], unpack(expired))
  redis.call('ZREM', KEYS[6], unpack(expired))
end
local over = redis.call('ZCARD', KEYS[6]) - max_keys
if over > 0 then
  local gone = redis.call('ZPOPMIN', KEYS[6], math.min(over, 1000))
  for j = 1, #gone, 2 do redis.call('HDEL', KEYS[5], gone[j]) end
end
local out = {first, prefix}
for i = 0, n - 1 do
  local v = verdicts[i + 1]
  if type(v) == 'table' then v = string.format('%d', offsets[v[1]]) .. ':' .. v[2] end
  out[#out + 1] = v
end
local tail = W + 7 * n
if fresh > 0 then
  redis.call('PUBLISH', ARGV[tail], string.format('a %s %d %d %s', ARGV[tail + 1], first, first + fresh, ARGV[tail + 2]))
end
return out
";

/// Reads from a topic's log.
///
/// KEYS: log, next, first, prefix. ARGV: from, most messages, most
/// payload bytes.
///
/// Returns `{first, next, prefix or nil}` followed, per message, by its
/// entry id, published ms, content type (nil for none), event type (nil
/// for none), trace context (nil for none) and payload: at
/// least one message whenever one is there, none that would take the
/// payload bytes past the limit after the first. Entries are fetched in
/// chunks sized by the bytes left and the sizes seen, so that large
/// payloads are not pulled into the script by the hundred.
const READ: &str = r"
local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = tonumber(redis.call('GET', KEYS[3]) or '0')
if first > nxt then first = nxt end
local out = {first, nxt, redis.call('GET', KEYS[4])}
local from = tonumber(ARGV[1])
if from < first then from = first end
local left = tonumber(ARGV[2])
if from >= nxt or left <= 0 then return out end
local max_bytes = tonumber(ARGV[3])
local bytes, got = 0, 0
local start = string.format('%d-0', from + 1)
local count = math.min(left, 16)
while left > 0 do
  local entries = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', count)
  for _, e in ipairs(entries) do
    local f = e[2]
    local t, c, ev, x, p = false, false, false, false, ''
    for j = 1, #f, 2 do
      local k = f[j]
      if k == 't' then t = f[j + 1] elseif k == 'c' then c = f[j + 1] elseif k == 'e' then ev = f[j + 1] elseif k == 'x' then x = f[j + 1] elseif k == 'p' then p = f[j + 1] end
    end
    bytes = bytes + #p
    if bytes > max_bytes and got > 0 then return out end
    out[#out + 1] = e[1]
    out[#out + 1] = t
    out[#out + 1] = c
    out[#out + 1] = ev
    out[#out + 1] = x
    out[#out + 1] = p
    got = got + 1
    left = left - 1
  end
  if #entries < count then break end
  start = '(' .. entries[#entries][1]
  local average = math.max(bytes / got, 1)
  count = math.max(1, math.min(left, 128, math.floor((max_bytes - bytes) / average) + 1))
end
return out
";

/// Retention: drops the oldest messages of a topic's log, those
/// published before the cutoff and those past the byte limit, at most
/// `step` of them a call.
///
/// KEYS: log, next, first, bytes. ARGV: cutoff (published ms), most
/// bytes, step.
///
/// Finds the oldest message to keep by a binary search over the offsets
/// (a message is kept when it is not older than the cutoff and the bytes
/// from it to the end fit the limit, which its `s` gives): about 2 log2(n)
/// one-entry reads, never the messages it drops. Publish times are only
/// about in offset order (clocks, concurrent publishes): a message a
/// little out of order may go a little early or late. Returns `{dropped,
/// 1 if more are due (call again)}`.
const TRIM: &str = r"
local nxt = tonumber(redis.call('GET', KEYS[2]) or '0')
local first = tonumber(redis.call('GET', KEYS[3]) or '0')
if first >= nxt then return {0, 0} end
local total = tonumber(redis.call('GET', KEYS[4]) or '0')
local cutoff, limit, step = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local function kept(o)
  local id = string.format('%d-0', o + 1)
  local e = redis.call('XRANGE', KEYS[1], id, id)
  -- A missing entry is not dropped on a guess.
  if #e == 0 then return true end
  local f = e[1][2]
  local t, s, n = 0, 0, 0
  for j = 1, #f, 2 do
    if f[j] == 't' then t = tonumber(f[j + 1])
    elseif f[j] == 's' then s = tonumber(f[j + 1])
    elseif f[j] == 'p' then n = #f[j + 1] end
  end
  return t >= cutoff and total - s + n <= limit
end
local lo, hi = first, nxt
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if kept(mid) then hi = mid else lo = mid + 1 end
end
if lo == first then return {0, 0} end
local more = 0
if lo - first > step then
  lo = first + step
  more = 1
end
redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', lo + 1))
redis.call('SET', KEYS[3], string.format('%d', lo))
return {lo - first, more}
";

/// Writes buffered attempt records, skipping subscribers no longer
/// registered, and trims each log it wrote to: none before `not_before`,
/// then the newest `keep`.
///
/// KEYS: registrations, then one attempt log per record. ARGV: keep,
/// not_before (µs), then per record (id, seq, encoded record).
const ATTEMPTS: &str = r"
local keep = tonumber(ARGV[1])
local touched = {}
for i = 1, #KEYS - 1 do
  local id = ARGV[3 * i]
  if redis.call('HEXISTS', KEYS[1], id) == 1 then
    redis.call('ZADD', KEYS[i + 1], ARGV[3 * i + 1], ARGV[3 * i + 2])
    touched[KEYS[i + 1]] = true
  end
end
for key in pairs(touched) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', '(' .. ARGV[2])
  redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
end
return 0
";

/// Writes buffered cursors and pending retries, skipping subscribers no
/// longer registered; a cursor only moves forward (several processes may
/// write it).
///
/// KEYS: registrations, cursors, then one retries key per retry change.
/// ARGV: the number of cursors c, c times (id, cursor), then per retry
/// change (id, offset, `attempts:due ms` or `''` to forget).
const FLUSH: &str = r"
local reg, cur = KEYS[1], KEYS[2]
local c = tonumber(ARGV[1])
local a = 2
for i = 1, c do
  local id, v = ARGV[a], ARGV[a + 1]
  a = a + 2
  if redis.call('HEXISTS', reg, id) == 1 then
    local old = redis.call('HGET', cur, id)
    if (not old) or tonumber(old) < tonumber(v) then
      redis.call('HSET', cur, id, v)
    end
  end
end
local k = 3
while a <= #ARGV do
  local id, off, v = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  if v == '' then
    redis.call('HDEL', KEYS[k], off)
  elseif redis.call('HEXISTS', reg, id) == 1 then
    redis.call('HSET', KEYS[k], off, v)
  end
  k = k + 1
end
return 0
";

/// Keeps a dead letter, replacing the one at its offset, and drops the
/// oldest past the bound.
///
/// KEYS: the owner's dead letters (a sorted set by offset of JSON
/// members). ARGV: offset, the dead letter's JSON, the bound.
///
/// Returns how many were dropped.
const PUT_DEAD_LETTER: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
local over = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[3])
if over > 0 then
  redis.call('ZPOPMIN', KEYS[1], over)
  return over
end
return 0
";

/// Gives a topic's log its incarnation (id prefix) unless it has one,
/// and returns the one it has: called as a topic is registered.
///
/// KEYS: prefix. ARGV: a never-used prefix.
const OPEN: &str = r"
local prefix = redis.call('GET', KEYS[1])
if not prefix then
  prefix = ARGV[1]
  redis.call('SET', KEYS[1], prefix)
end
return prefix
";

/// Announces a registration change or a topic deletion: numbers it
/// (`INCR` of the version key) and publishes `<kind> <replica> <version>
/// <subject>` on the changes channel.
///
/// KEYS: version. ARGV: channel, kind (`r` registration, `d` topic
/// deleted), replica id, subject (record id or topic).
pub(crate) const ANNOUNCE: &str = r"
local v = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], string.format('%s %s %d %s', ARGV[2], ARGV[3], v, ARGV[4]))
return v
";

/// Stores a registration that has a name (publisher, listener,
/// subscriber) unless another id holds that name, and announces it.
///
/// KEYS: registrations, names, version. ARGV: id, JSON, name, channel,
/// replica id. Returns `{1, ''}` when stored, `{0, the other id}` when
/// another registration has the name.
pub(crate) const REGISTER: &str = r"
local have = redis.call('HGET', KEYS[2], ARGV[3])
if have and have ~= ARGV[1] and redis.call('HEXISTS', KEYS[1], have) == 1 then
  return {0, have}
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[1], 'id:' .. ARGV[1], ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local v = redis.call('INCR', KEYS[3])
redis.call('PUBLISH', ARGV[4], string.format('r %s %d %s', ARGV[5], v, ARGV[1]))
return {1, ''}
";

/// Forgets the name of a registration being removed.
///
/// KEYS: names. ARGV: id.
pub(crate) const UNNAME: &str = r"
local field = 'id:' .. ARGV[1]
local name = redis.call('HGET', KEYS[1], field)
if name and redis.call('HGET', KEYS[1], name) == ARGV[1] then
  redis.call('HDEL', KEYS[1], name)
end
redis.call('HDEL', KEYS[1], field)
return 0
";

/// Says a replica is alive until the Redis time plus a TTL, forgets those
/// past theirs, and returns the ids of those alive, sorted.
///
/// KEYS: replicas. ARGV: replica id, TTL ms.
const HEARTBEAT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
";

/// Takes each free lease or renews each of this replica's, for a TTL.
///
/// KEYS: the leases. ARGV: replica id, TTL ms. Returns 1 per lease held
/// now, 0 per lease another replica holds.
const CLAIM: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local holder = redis.call('GET', key)
  if not holder then
    redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
    out[i] = 1
  elseif holder == ARGV[1] then
    redis.call('PEXPIRE', key, ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
";

/// Gives up each of this replica's leases (another's stays).
///
/// KEYS: the leases. ARGV: replica id.
const RELEASE: &str = r"
for _, key in ipairs(KEYS) do
  if redis.call('GET', key) == ARGV[1] then
    redis.call('DEL', key)
  end
end
return 0
";

/// The scripts, hashed once.
pub(crate) struct Scripts {
    pub(crate) append: Script,
    pub(crate) open: Script,
    pub(crate) read: Script,
    pub(crate) trim: Script,
    pub(crate) flush: Script,
    pub(crate) attempts: Script,
    pub(crate) put_dead_letter: Script,
    pub(crate) heartbeat: Script,
    pub(crate) register: Script,
    pub(crate) claim: Script,
    pub(crate) release: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Scripts {
            append: Script::new(APPEND),
            open: Script::new(OPEN),
            read: Script::new(READ),
            trim: Script::new(TRIM),
            flush: Script::new(FLUSH),
            attempts: Script::new(ATTEMPTS),
            put_dead_letter: Script::new(PUT_DEAD_LETTER),
            heartbeat: Script::new(HEARTBEAT),
            register: Script::new(REGISTER),
            claim: Script::new(CLAIM),
            release: Script::new(RELEASE),
        }
    }
}
