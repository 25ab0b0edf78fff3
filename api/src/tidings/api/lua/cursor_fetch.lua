-- cursor_fetch: what a Trigger may start now (tidings.dispatcher.cursor, Cursor.fetch).
-- KEYS: those of _cursor_keys.lua (K_STREAM .. K_LOG), in its order.
-- ARGV: [1] group, [2] consumer, [3] want, [4] lease ms, [5] concurrency, [6] rate
--   per second, [7] burst, [8] reclaim idle ms (0: do not reclaim), [9] ordering
--   path ("": unordered), [10] probe ("1": fetch even in Backoff, for the probe),
--   [11] the Trigger's delivery.delay in ms (0: none), [12] the DLQ's max entries
--   (a replayed dead letter whose Replay was deleted goes back there).
-- A new entry not due yet (its FIELD_DUE, or its ingest time + the delay, is
-- ahead) is set aside, not delivered: acked, scheduled in the retry ZSET at its
-- due time, held against retention (in the delayed-held ZSET) and marked in the
-- delayed ZSET; it comes back as a due retry with no attempt spent, taking its
-- ordering key then, and moves to the held ZSET (everything there is due).
-- Returns {status, info, entries}; status ok | limited (info: ms to wait) |
-- empty (info: {last stream id, ms until the next retry is due, or -1, entries
-- leased to any consumer of the group, entries set aside now}) | more (nothing to
-- start: what it read waits, and more is unread; look again now; info: entries set
-- aside now) | backoff. Set aside (delayed or parked) changes what the Trigger's
-- state says without anything to deliver: the caller publishes it.
-- Each entry: {origin r|c|n, stream id, fields, attempts so far, "k"..key or ""}.
--#include _cursor_keys.lua
--#include _limits.lua
--#include _ordering.lua
--#include _replayed.lua
local group, consumer = ARGV[1], ARGV[2]
--#include _now.lua
local want, lease = tonumber(ARGV[3]), tonumber(ARGV[4])
local limit, rate, burst = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local reclaim_idle, path, probe = tonumber(ARGV[8]), ARGV[9], ARGV[10]
local delay = tonumber(ARGV[11] or '0')
local dlq_max = tonumber(ARGV[12])

if probe ~= '1' and redis.call('HGET', KEYS[K_STATE], {{STATE_STATE}}) == {{BACKOFF}} then
  return {'backoff', 0, {}}
end
local tokens
want, tokens = limits_take(want, now, limit, rate, burst)
if want <= 0 then
  local wait = 5
  if rate > 0 and tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end
  return {'limited', wait, {}}
end

local parts = nil
if path ~= '' then parts = order_path(path) end
local out, ids = {}, {}
local function take(origin, id, fields)
  local key = ''
  if parts then
    local k = order_key(fields, parts)
    if k then key = 'k' .. k end
  end
  local attempts = '0'
  if origin == 'r' then attempts = redis.call('HGET', KEYS[K_ATTEMPTS], id) or '0' end
  out[#out + 1] = {origin, id, fields, attempts, key}
  ids[#ids + 1] = id
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[K_RETRY], '-inf', now, 'LIMIT', 0, want)) do
  -- A replayed dead letter is delivered from its copy (deadletter.py).
  local fields = replayed(id)
  local owner = fields and redis.call('HGET', KEYS[K_OWNERS], id)  -- its Replay, if any
  if owner == '' then
    -- Its Replay was deleted while it was leased, and the lease ran out (replay_cancel.lua).
    replay_withdraw(id, dlq_max)
  else
    if not fields then
      local entry = redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
      fields = entry and entry[2]
    end
    if fields then
      local key = nil
      if redis.call('ZREM', KEYS[K_DELAYED], id) == 1 then
        -- A delayed event's first attempt: it is due, and takes its ordering key only now.
        redis.call('ZREM', KEYS[K_DELAYED_HELD], id)
        redis.call('ZADD', KEYS[K_HELD], id_ms(id), id)
        if parts then key = order_key(fields, parts) end
      end
      if key and not order_acquire(key, id) then
        redis.call('ZREM', KEYS[K_RETRY], id)
        order_park(key, id)
      else
        redis.call('ZADD', KEYS[K_RETRY], now + lease, id)
        -- Deleting its Replay now lets this attempt end (replay_cancel.lua).
        if owner then redis.call('SADD', KEYS[K_LEASED], id) end
        take('r', id, fields)
      end
    else
      -- Gone from the stream: retention took it and counted it expired (it also
      -- passed on the ordering key it held; retention_trim.lua), or it was deleted
      -- by hand. Nothing left to deliver.
      redis.call('ZREM', KEYS[K_RETRY], id)
      redis.call('ZREM', KEYS[K_HELD], id)
      redis.call('ZREM', KEYS[K_DELAYED], id)
      redis.call('ZREM', KEYS[K_DELAYED_HELD], id)
      redis.call('HDEL', KEYS[K_ATTEMPTS], id)
    end
  end
end

if reclaim_idle > 0 and #out < want then
  local claimed = redis.call('XAUTOCLAIM', KEYS[K_STREAM], group, consumer, reclaim_idle, '0-0',
    'COUNT', want - #out)
  for _, entry in ipairs(claimed[2]) do
    if entry and entry[2] then take('c', entry[1], entry[2]) end
  end
end

-- When an entry is due: its FIELD_DUE, pushed back by the Trigger's delay.
local function due_of(fields)
  local due, ingested = 0, 0
  for i = 1, #fields, 2 do
    if fields[i] == {{FIELD_DUE}} then due = tonumber(fields[i + 1]) or 0
    elseif fields[i] == {{FIELD_TIME}} then ingested = tonumber(fields[i + 1]) or 0 end
  end
  if delay > 0 and ingested + delay > due then due = ingested + delay end
  return due
end

-- Entries set aside as delayed or parked behind their key free their place: read
-- again, a few rounds at most.
local rounds, full, set_aside = 0, false, 0
while #out < want and rounds < 4 do
  rounds = rounds + 1
  local count = want - #out
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', count,
    'STREAMS', KEYS[K_STREAM], '>')
  if not read then full = false break end
  full = #read[1][2] >= count
  local aside = 0
  for _, entry in ipairs(read[1][2]) do
    local id, fields = entry[1], entry[2]
    local due = due_of(fields)
    if due > now then
      redis.call('XACK', KEYS[K_STREAM], group, id)
      redis.call('ZADD', KEYS[K_RETRY], due, id)
      redis.call('ZADD', KEYS[K_DELAYED_HELD], id_ms(id), id)
      redis.call('ZADD', KEYS[K_DELAYED], due, id)
      aside = aside + 1
    else
      local key = parts and order_key(fields, parts)
      if key and not order_acquire(key, id) then
        redis.call('XACK', KEYS[K_STREAM], group, id)
        order_park(key, id)
        aside = aside + 1
      else
        take('n', id, fields)
      end
    end
  end
  set_aside = set_aside + aside
  if aside == 0 then break end
end

if #out == 0 then
  -- All it read waits (parked or delayed), and there may be more to read.
  if full then return {'more', set_aside, {}} end
  local last = redis.call('XREVRANGE', KEYS[K_STREAM], '+', '-', 'COUNT', 1)[1]
  local due = redis.call('ZRANGE', KEYS[K_RETRY], 0, 0, 'WITHSCORES')[2]
  local due_in = -1
  if due then due_in = math.max(0, tonumber(due) - now) end
  local leased = redis.call('XPENDING', KEYS[K_STREAM], group)[1]
  return {'empty', {last and last[1] or '0-0', due_in, leased, set_aside}, {}}
end
limits_commit(now, now + lease, consumer, ids, limit, tokens, rate)
return {'ok', 0, out}
