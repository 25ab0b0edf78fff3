-- retention_trim: trim a source's stream by maxAge / maxEvents, never past an entry
-- being delivered right now (or a delayed event not due yet), counting
-- what each Trigger loses undelivered (tidings.dispatcher.retention).
-- KEYS: [1] the source's stream, [2] its event index ZSET (trimmed with the
--   stream), then per Trigger i (1, 2, ...) the n keys of _cursor_keys.lua, in its
--   order, at [2 + n (i - 1) + 1 .. 2 + n i].
-- ARGV: [1] now ms (the caller's clock, for maxAge; leases are on Redis's), [2] maxAge
--   ms, [3] maxEvents, [4] step (most entries trimmed per call), then per Trigger i:
--   [3 + 2i] its group name, [4 + 2i] its ordering path ("": unordered; "?": not
--   known, a Trigger not routed now, whose held keys are looked up instead).
-- Per Trigger, an entry below the trim point it has not settled is lost, counted
-- once here in its state HASH (expired), and its bookkeeping goes with it: unread;
-- a retry scheduled or an entry parked behind its ordering key (the held ZSET:
-- retention wins over a retry that is not under way); a delayed event due and not
-- fetched yet (the delayed-held ZSET); an entry pending at a
-- consumer whose lease (timeout + margin, the reclaim time) has run out. An
-- ordering key such an entry held passes to the key's next event. Protected (the
-- trim point is pulled back to them): entries leased now (the in-flight ZSET,
-- bounded by concurrency), and delayed events before their first attempt and not
-- due yet (in the delayed-held ZSET, due in the future by the delayed ZSET's score;
-- docs/replay.md).
-- Returns {entries trimmed, the oldest entry kept (ms; 0: none), then per Trigger:
--   expired now}: until that entry reaches maxAge, only new entries (maxEvents) or
--   ended leases give the next call anything to do.
local ALL = KEYS
local KEYS = {}  -- one Trigger's view, as the cursor scripts see it (view(i))
--#include _cursor_keys.lua
--#include _ordering.lua
--#include _now.lua
local SOURCE_STREAM, INDEX = ALL[1], ALL[2]
local triggers = (#ARGV - 4) / 2
local PER_TRIGGER = triggers > 0 and (#ALL - 2) / triggers or 0
local function view(i)
  for j = 1, PER_TRIGGER do KEYS[j] = ALL[2 + PER_TRIGGER * (i - 1) + j] end
end

local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function after(id)  -- the smallest id greater than `id`
  local ms, seq = parse(id)
  return string.format('%d-%d', ms, seq + 1)
end

local caller_now, max_age, max_events, step = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', SOURCE_STREAM) == 0 then return {0, 0} end
local first = redis.call('XRANGE', SOURCE_STREAM, '-', '+', 'COUNT', 1)[1]
if not first then return {0, 0} end
first = first[1]

local groups = {}
local ok, infos = pcall(redis.call, 'XINFO', 'GROUPS', SOURCE_STREAM)
if ok then
  for _, g in ipairs(infos) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    groups[info['name']] = info['last-delivered-id']
  end
end

-- The trim point: entries with a smaller id go.
local cut = string.format('%d-0', math.max(0, caller_now - max_age))
local length = redis.call('XLEN', SOURCE_STREAM)
if length > max_events then
  local over = redis.call('XRANGE', SOURCE_STREAM, '-', '+', 'COUNT', math.min(length - max_events, step))
  if #over > 0 then
    local by_count = after(over[#over][1])
    if less(cut, by_count) then cut = by_count end
  end
end
-- Never under a delivery in progress: a live lease "consumer:id" (an id below the
-- stream's first entry is a replayed copy's, or gone already: nothing to keep).
for i = 1, triggers do
  view(i)
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[K_INFLIGHT], '(' .. now, '+inf')) do
    local id = string.match(member, ':(%d+%-%d+)$')
    if id and not less(id, first) and less(id, cut) then cut = id end
  end
end
if not less(first, cut) then return {0, (parse(first))} end
-- At most `step` entries per call, whichever rule set the cut (maxAge can put it
-- millions of entries in): the counts of what each Trigger loses below stay exact.
local head = redis.call('XRANGE', SOURCE_STREAM, '-', '(' .. cut, 'COUNT', step + 1)
if #head > step then cut = head[step + 1][1] end

-- Nor under a delayed event before its first attempt that is not due yet: the point
-- of a delay longer than the retention (docs/replay.md); ingest bounds it by
-- maxDelay. One already due waits only for a fetch, which a paused Trigger or one in
-- Backoff does not make: it pins nothing, and beyond the bound it expires like a
-- retry (below). The delayed-held ZSET is in id order; its due time is the delayed
-- ZSET's score.
-- Upgrade: before :delayed-held existed a delayed event waited in :held, where the
-- loop below would take it before its first attempt. Such ids move over here, once
-- (a moved id is no longer in :held): only those below the trim point matter to
-- retention, the held loop looks at them anyway, and fetch and settle pay nothing.
-- Whichever set is smaller is walked: most Triggers have nothing delayed.
for i = 1, triggers do
  view(i)
  local delayed = redis.call('ZCARD', KEYS[K_DELAYED])
  if delayed > 0 then
    local low, high = (parse(first)), (parse(cut))
    local ids
    if delayed < redis.call('ZCOUNT', KEYS[K_HELD], low, high) then
      ids = redis.call('ZRANGE', KEYS[K_DELAYED], 0, -1)
    else
      ids = redis.call('ZRANGEBYSCORE', KEYS[K_HELD], low, high)
    end
    for _, id in ipairs(ids) do
      local ms = id_ms(id)
      if ms >= low and ms <= high and redis.call('ZSCORE', KEYS[K_HELD], id)
          and redis.call('ZSCORE', KEYS[K_DELAYED], id) then
        redis.call('ZREM', KEYS[K_HELD], id)
        redis.call('ZADD', KEYS[K_DELAYED_HELD], ms, id)
      end
    end
  end
end
local due_delayed = {}  -- per Trigger: ids due, below the cut as it was
for i = 1, triggers do
  view(i)
  local due, offset, top = {}, 0, (parse(cut))
  repeat  -- (one millisecond's ids come in text order: each is looked at)
    local ids = redis.call('ZRANGEBYSCORE', KEYS[K_DELAYED_HELD], (parse(first)), top,
      'LIMIT', offset, 100)
    offset = offset + #ids
    for _, id in ipairs(ids) do
      if less(id, cut) and not less(id, first) then
        if tonumber(redis.call('ZSCORE', KEYS[K_DELAYED], id) or '0') > now then
          cut = id  -- not due: the trim stops under it
        else
          due[#due + 1] = id
        end
      end
    end
  until #ids < 100
  due_delayed[i] = due
end
if not less(first, cut) then return {0, (parse(first))} end

local function fields_of(id)
  local entry = redis.call('XRANGE', SOURCE_STREAM, id, id)[1]
  return entry and entry[2]
end
-- A Trigger not routed now (withdrawn: not Ready) has no ordering path here: the
-- keys its entries hold or wait behind are looked up, once per Trigger and call
-- ({holders: id -> key, parked: id -> member}); only such a Trigger's trim pays it.
local UNKNOWN = '?'
local found = nil
local function looked_up()
  if found then return found end
  found = {holders = {}, parked = {}}
  local order = redis.call('HGETALL', KEYS[K_ORDER])
  for j = 1, #order, 2 do found.holders[order[j + 1]] = order[j] end
  for _, member in ipairs(redis.call('ZRANGE', KEYS[K_PARKED], 0, -1)) do
    found.parked[unpadded(string.sub(member, -41))] = member  -- key .. "\0" .. padded id
  end
  return found
end

-- The ordering key `id` may hold passes to the key's next event (due now), and an
-- entry parked behind its key leaves the queue.
local function unorder(id, parts)
  if not parts then return end
  if parts == UNKNOWN then
    local keys_of = looked_up()
    local member, key = keys_of.parked[id], keys_of.holders[id]
    if member then
      redis.call('ZREM', KEYS[K_PARKED], member)
      keys_of.parked[id] = nil
    elseif key then
      keys_of.holders[id] = nil
      local next_id = order_release(key, id, now)
      if next_id then
        keys_of.holders[next_id] = key
        keys_of.parked[next_id] = nil
      end
    end
    return
  end
  local fields = fields_of(id)
  local key = fields and order_key(fields, parts)
  if not key then return end
  redis.call('ZREM', KEYS[K_PARKED], key .. '\0' .. padded(id))
  order_release(key, id, now)
end

local out = {0, 0}
for i = 1, triggers do
  view(i)
  local group, path = ARGV[3 + 2 * i], ARGV[4 + 2 * i]
  local parts = nil
  if path == UNKNOWN then parts = UNKNOWN elseif path ~= '' then parts = order_path(path) end
  found = nil
  local lost = 0
  -- Not read yet.
  local last = groups[group]
  if last and less(last, cut) then
    local start = after(last)
    if less(start, first) then start = first end
    lost = lost + #redis.call('XRANGE', SOURCE_STREAM, start, '(' .. cut, 'COUNT', step)
  end
  -- Pending at a consumer whose lease ran out (live ones are above the cut).
  local stale = {}
  if last then
    local ids = {}
    for _, p in ipairs(redis.call('XPENDING', SOURCE_STREAM, group, first, '(' .. cut, step)) do
      ids[#ids + 1] = p[1]
      stale[p[1]] = true
      unorder(p[1], parts)
    end
    for j = 1, #ids, 1000 do
      redis.call('XACK', SOURCE_STREAM, group, unpack(ids, j, math.min(j + 999, #ids)))
    end
    lost = lost + #ids
  end
  -- Scheduled for a retry, or parked behind its key (a replayed copy keeps its own),
  -- oldest first; one already gone is the fetch's to drop (cursor_fetch.lua).
  local held = {}
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[K_HELD], (parse(first)), (parse(cut)))) do
    if not less(id, first) and less(id, cut) then held[#held + 1] = id end
  end
  table.sort(held, less)
  for _, id in ipairs(held) do
    redis.call('ZREM', KEYS[K_HELD], id)
    if redis.call('HEXISTS', KEYS[K_REPLAY], id) == 0 and not stale[id] then
      unorder(id, parts)
      redis.call('ZREM', KEYS[K_RETRY], id)
      redis.call('ZREM', KEYS[K_DELAYED], id)  -- else reported undelivered forever once due
      redis.call('HDEL', KEYS[K_ATTEMPTS], id)
      lost = lost + 1
    end
  end
  -- Delayed events due and never fetched (an id below the stream's first entry is
  -- gone already, and the fetch's to drop).
  for _, id in ipairs(due_delayed[i]) do
    if less(id, cut) then
      redis.call('ZREM', KEYS[K_DELAYED_HELD], id)
      redis.call('ZREM', KEYS[K_DELAYED], id)
      redis.call('ZREM', KEYS[K_RETRY], id)
      if not less(id, first) then lost = lost + 1 end
    end
  end
  if lost > 0 then redis.call('HINCRBY', KEYS[K_STATE], {{STATE_EXPIRED}}, lost) end
  out[#out + 1] = lost
end
out[1] = redis.call('XTRIM', SOURCE_STREAM, 'MINID', cut)
-- The index by millisecond: below the first entry kept (with none kept, through the
-- last one trimmed), so an id that shared a trimmed entry's ms does not linger.
local kept = redis.call('XRANGE', SOURCE_STREAM, '-', '+', 'COUNT', 1)[1]
local below
if kept then
  below = '(' .. parse(kept[1])
else
  local ms, seq = parse(cut)
  below = seq > 0 and tostring(ms) or '(' .. ms
end
redis.call('ZREMRANGEBYSCORE', INDEX, '-inf', below)
out[2] = kept and parse(kept[1]) or 0
return out
