"""The Lua scripts of the Redis event log: each join, activation, default sweep and insert is
one script, so Redis runs it atomically with respect to every other client (replica).

Every script receives the key prefix as ``ARGV[1]`` and builds its keys from it: the keys a
join touches depend on the decision it finds, which a caller cannot declare in advance. This
suits one Redis server (with replicas or Sentinel), not Redis Cluster.

Floats cross the boundary as text. Python sends ``repr(float)`` and Lua's ``tonumber`` reads
it back exactly (both are correctly rounded); Lua writes with ``%.17g``, which Python's
``float`` reads back exactly. Lua numbers are IEEE doubles, so ``clip(total + value)`` here is
bitwise the same as `banditrec.rewards.join_reward` in Python (the contract suite checks it).

Keys (``P`` is the prefix):

==================  ======  ==================================================================
``P:meta``          hash    ``encoding_hash``, ``log_id``
``P:seq``           string  the last learn event seq (INCR)
``P:learn``         stream  learn events, id ``<seq>-0``: e, k, a, x, r, w, t
``P:dseq``          string  the last decision seq
``P:decisions``     stream  decisions in log order, id ``<dseq>-0``: e (event id)
``P:d:<event id>``  hash    a decision: its fields, ``st`` state, ``dl`` deadline, ``tot`` total
``P:pending``       zset    pending decisions by deadline (the default-reward sweep)
``P:rewards``       stream  every reward received: e, t, v, o (outcome)
``P:epochs``        hash    base model version → log offset
``P:lease:<name>``  hash    ``o`` owner, ``e`` expiry (caller's clock); PEXPIRE'd for cleanup
``P:snapshots``     zset    snapshot offsets; ``P:snap:<offset>`` holds the bytes
``P:done:<token>``  string  a call's result for 30 s, so a retried call is not applied twice
``P:u:<user>:v``    string  the version of a user's record (caps; INCR), expires with it
``P:u:<user>:e``    zset    the user's recent serves and negatives, ``kind|action|time|nonce``
==================  ======  ==================================================================
"""

from __future__ import annotations

__all__ = [
    "ACTION_CHANGE",
    "ACTIVATE",
    "DEFAULTS",
    "DELETE_DECISIONS",
    "EPOCH",
    "LEASE",
    "LOG_DECISIONS",
    "OPEN",
    "PUT_SNAPSHOT",
    "RECORD_REWARD",
    "RECORD_REWARDS",
    "RELEASE",
    "SNAPSHOTS",
    "USER_EVENT",
]

#: Fields of one decision in the arguments of LOG_DECISIONS, in order.
DECISION_FIELDS = ("c", "v", "ctx", "x", "as", "el", "ai", "a", "p", "ps", "sc", "u", "st", "dl")

_COMMON = """
local P = ARGV[1]
local function fmt(x) return string.format('%.17g', x) end
-- Python's min(max(v, lo), hi), comparison for comparison (also for NaN and -0.0).
local function clip(v, lo, hi)
  if lo > v then v = lo end
  if hi < v then v = hi end
  return v
end
-- propensity: the decision's logged probability ('' for entries that are not rewards).
local function learn(event_id, kind, action_index, x, reward, weight, now, propensity)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('XADD', P .. 'learn', string.format('%d-0', seq), 'e', event_id, 'k', kind,
    'a', action_index, 'x', x, 'r', reward, 'w', weight, 't', now, 'p', propensity)
  return seq
end
-- A call retried after a lost reply finds its first result here instead of running twice.
local function replay(token)
  if token == '' then return nil end
  local done = redis.call('GET', P .. 'done:' .. token)
  if done then return cjson.decode(done) end
  return nil
end
local function remember(token, result)
  if token ~= '' then
    redis.call('SET', P .. 'done:' .. token, cjson.encode(result), 'EX', 30)
  end
  return result
end
"""

#: ARGV: prefix, encoding hash, a new log id. Returns {encoding hash, log id} as stored.
OPEN = (
    _COMMON
    + """
redis.call('HSETNX', P .. 'meta', 'encoding_hash', ARGV[2])
redis.call('HSETNX', P .. 'meta', 'log_id', ARGV[3])
return redis.call('HMGET', P .. 'meta', 'encoding_hash', 'log_id')
"""
)

#: ARGV: prefix, then per decision its event id and the DECISION_FIELDS (user id '' when
#: none, deadline '' while inactive). Returns 1 per decision logged now, 0 per event id
#: logged before (that decision stands).
LOG_DECISIONS = (
    _COMMON
    + """
local width = 15
local out = {}
local dseq, pending, decisions = P .. 'dseq', P .. 'pending', P .. 'decisions'
for i = 0, (#ARGV - 1) / width - 1 do
  local b = 1 + i * width
  local id = ARGV[b + 1]
  local key = P .. 'd:' .. id
  if redis.call('EXISTS', key) == 1 then
    out[i + 1] = 0
  else
    local n = redis.call('INCR', dseq)
    local h = {'n', n, 'c', ARGV[b + 2], 'v', ARGV[b + 3], 'ctx', ARGV[b + 4],
      'x', ARGV[b + 5], 'as', ARGV[b + 6], 'el', ARGV[b + 7], 'ai', ARGV[b + 8],
      'a', ARGV[b + 9], 'p', ARGV[b + 10], 'ps', ARGV[b + 11], 'sc', ARGV[b + 12],
      'u', ARGV[b + 13], 'st', ARGV[b + 14]}
    local deadline = ARGV[b + 15]
    if deadline ~= '' then  -- one HSET per decision: each command costs Redis a dispatch
      h[#h + 1], h[#h + 2] = 'dl', deadline
      redis.call('ZADD', pending, deadline, id)
    end
    redis.call('HSET', key, unpack(h))
    redis.call('XADD', decisions, string.format('%d-0', n), 'e', id)
    out[i + 1] = 1
  end
end
return out
"""
)

#: One reward, as the scripts below call it: its event id, value and time (as sent), the
#: aggregation, reward range and replay token. Returns {outcome, total ('' for none), action
#: ('' for none), seq of the learn event appended ('' for none)}; mirrors
#: rewards.join_reward.
_RECORD = """
local function record(id, value_s, now_s, aggregation, lo, hi, token)
  local before = replay(token)
  if before then return before end
  local value, now = tonumber(value_s), tonumber(now_s)
  local key = P .. 'd:' .. id
  local h = redis.call('HMGET', key, 'st', 'dl', 'tot', 'ai', 'a', 'x', 'p')
  local state, deadline, total, index, action, x = h[1], h[2], h[3], h[4], h[5], h[6]
  local propensity = h[7] or ''
  local outcome
  local seq = ''  -- the learn event appended, if any
  if not state then
    outcome, total, action = 'unknown', false, false
  elseif state == 'inactive' then
    outcome, total = 'not_activated', false
  elseif state == 'defaulted' or now > tonumber(deadline) then
    outcome = 'late'
  elseif state == 'pending' then
    outcome, total = 'learned', fmt(clip(value, lo, hi))
    seq = learn(id, 'reward', index, x, total, '1', now_s, propensity)
    redis.call('HSET', key, 'st', 'rewarded', 'tot', total)
    redis.call('ZREM', P .. 'pending', id)
  elseif aggregation == 'earliest' then
    outcome = 'duplicate'
  else
    outcome = 'summed'
    local old = tonumber(total)
    local new = clip(old + value, lo, hi)
    if new ~= old then  -- the correction moves b only (see LinUCB.correct)
      seq = learn(id, 'correction', index, x, fmt(new - old), '1', now_s, propensity)
      total = fmt(new)
      redis.call('HSET', key, 'tot', total)
    end
  end
  redis.call('XADD', P .. 'rewards', '*', 'e', id, 't', now_s, 'v', value_s, 'o', outcome)
  return remember(token, {outcome, total or '', action or '', seq})
end
"""

#: ARGV: prefix, event id, value, now, aggregation, min reward, max reward, token.
#: Returns the reward's {outcome, total, action, seq} (see _RECORD).
RECORD_REWARD = (
    _COMMON
    + _RECORD
    + """
return record(ARGV[2], ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]),
  ARGV[8])
"""
)

#: A group of rewards in one script, in order. ARGV: prefix, aggregation, min reward, max
#: reward, then per reward its event id, value, now and token. Returns the 4 values of
#: each reward (see _RECORD), one after the other. Their learn events are appended by one
#: script, so a replica's blocking read of the stream wakes once for the whole group.
RECORD_REWARDS = (
    _COMMON
    + _RECORD
    + """
local aggregation, lo, hi = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV, 4 do
  local one = record(ARGV[i], ARGV[i + 1], ARGV[i + 2], aggregation, lo, hi, ARGV[i + 3])
  for j = 1, 4 do out[#out + 1] = one[j] end
end
return out
"""
)

#: ARGV: prefix, event id, the deadline if activated now. Returns 1, 0 (active already) or
#: -1 (unknown).
ACTIVATE = (
    _COMMON
    + """
local key = P .. 'd:' .. ARGV[2]
local state = redis.call('HGET', key, 'st')
if not state then return -1 end
if state ~= 'inactive' then return 0 end
redis.call('HSET', key, 'st', 'pending', 'dl', ARGV[3])
redis.call('ZADD', P .. 'pending', ARGV[3], ARGV[2])
return 1
"""
)

#: ARGV: prefix, now, default reward, limit. Returns the action of each decision defaulted.
DEFAULTS = (
    _COMMON
    + """
local now, reward = ARGV[2], fmt(tonumber(ARGV[3]))
local ids = redis.call('ZRANGEBYSCORE', P .. 'pending', '-inf', '(' .. now,
  'LIMIT', 0, tonumber(ARGV[4]))
local actions = {}
for _, id in ipairs(ids) do
  local key = P .. 'd:' .. id
  local h = redis.call('HMGET', key, 'st', 'ai', 'a', 'x', 'p')
  if h[1] == 'pending' then
    learn(id, 'default', h[2], h[4], reward, '1', now, h[5] or '')
    redis.call('HSET', key, 'st', 'defaulted', 'tot', reward)
    actions[#actions + 1] = h[3]
  end
  redis.call('ZREM', P .. 'pending', id)
end
return actions
"""
)

#: ARGV: prefix, then (event id, state, ...) pairs; a user id instead of a state removes the
#: decision if it is that user's ('u:' + user id), whatever its state. Removes each decision
#: (hash, log entry, pending entry) that is still in that state, or the user's. Returns how
#: many were removed.
DELETE_DECISIONS = (
    _COMMON
    + """
local removed = 0
for i = 2, #ARGV - 1, 2 do
  local id, want = ARGV[i], ARGV[i + 1]
  local key = P .. 'd:' .. id
  local h = redis.call('HMGET', key, 'st', 'n', 'u')
  if h[1] and (h[1] == want or (want:sub(1, 2) == 'u:' and h[3] == want:sub(3))) then
    redis.call('DEL', key)
    redis.call('XDEL', P .. 'decisions', h[2] .. '-0')
    redis.call('ZREM', P .. 'pending', id)
    removed = removed + 1
  end
end
return removed
"""
)

#: ARGV: prefix, kind, action name, now, token. Returns the seq of the change.
ACTION_CHANGE = (
    _COMMON
    + """
local before = replay(ARGV[5])
if before then return tonumber(before[1]) end
local seq = learn(ARGV[3], ARGV[2], '-1', '', '0', '0', ARGV[4], '')
remember(ARGV[5], {tostring(seq)})
return seq
"""
)

#: ARGV: prefix, base version. Returns the base version's offset, registered on first sight.
EPOCH = (
    _COMMON
    + """
redis.call('HSETNX', P .. 'epochs', ARGV[2], redis.call('GET', P .. 'seq') or '0')
return tonumber(redis.call('HGET', P .. 'epochs', ARGV[2]))
"""
)

#: ARGV: prefix, name, owner, now, expires at, ttl in ms. Returns 1 if held by owner now.
LEASE = (
    _COMMON
    + """
local key = P .. 'lease:' .. ARGV[2]
local h = redis.call('HMGET', key, 'o', 'e')
if (not h[1]) or h[1] == ARGV[3] or tonumber(h[2]) < tonumber(ARGV[4]) then
  redis.call('HSET', key, 'o', ARGV[3], 'e', ARGV[5])
  redis.call('PEXPIRE', key, ARGV[6])
  return 1
end
return 0
"""
)

#: ARGV: prefix, name, owner. Frees the lease if owner holds it.
RELEASE = (
    _COMMON
    + """
local key = P .. 'lease:' .. ARGV[2]
if redis.call('HGET', key, 'o') == ARGV[3] then redis.call('DEL', key) end
return 0
"""
)

#: ARGV: prefix, offset, data, how many to keep.
PUT_SNAPSHOT = (
    _COMMON
    + """
redis.call('SET', P .. 'snap:' .. ARGV[2], ARGV[3])
redis.call('ZADD', P .. 'snapshots', ARGV[2], ARGV[2])
local keep = tonumber(ARGV[4])
for _, old in ipairs(redis.call('ZRANGE', P .. 'snapshots', 0, -keep - 1)) do
  redis.call('DEL', P .. 'snap:' .. old)
end
redis.call('ZREMRANGEBYRANK', P .. 'snapshots', 0, -keep - 1)
return 0
"""
)

#: ARGV: prefix. Returns {offset, data, offset, data, ...}, newest first.
SNAPSHOTS = (
    _COMMON
    + """
local out = {}
for _, offset in ipairs(redis.call('ZREVRANGE', P .. 'snapshots', 0, -1)) do
  local data = redis.call('GET', P .. 'snap:' .. offset)
  if data then
    out[#out + 1] = offset
    out[#out + 1] = data
  end
end
return out
"""
)

#: A serve (only if the user's record is still at the version read) or a negative reward,
#: for frequency caps and cooldowns. ARGV: prefix, user id, kind ("serve" | "negative"),
#: action, time, expected version ("" for any), keep-after time, TTL in seconds, nonce.
#: Returns 1 if recorded, 0 if the version had moved.
USER_EVENT = """
local P = ARGV[1]
local v_key, e_key = P .. 'u:' .. ARGV[2] .. ':v', P .. 'u:' .. ARGV[2] .. ':e'
local version = tonumber(redis.call('GET', v_key) or '0')
if ARGV[6] ~= '' and version ~= tonumber(ARGV[6]) then return 0 end
redis.call('SET', v_key, version + 1, 'EX', ARGV[8])
redis.call('ZREMRANGEBYSCORE', e_key, '-inf', '(' .. ARGV[7])
redis.call('ZADD', e_key, ARGV[5], ARGV[3] .. '|' .. ARGV[4] .. '|' .. ARGV[5] .. '|' .. ARGV[9])
redis.call('EXPIRE', e_key, ARGV[8])
return 1
"""
