-- retention_trim: trim a source's stream by maxAge / maxEvents, never past an entry
-- a Trigger holds, counting what each Trigger loses unread
-- (tidings.dispatcher.retention).
-- KEYS: [1] the source's stream, then per Trigger i (1, 2, ...): [3i - 1] held ZSET,
--   [3i] delayed-held ZSET (delayed events not due yet), [3i + 1] trigger state
--   HASH; last, the source's event index ZSET (trimmed with the stream).
-- ARGV: [1] now ms (the caller's clock), [2] maxAge ms, [3] maxEvents, [4] step (most
--   entries trimmed per call), then [4 + i] the Triggers' group names.
-- Returns {entries trimmed, the oldest entry kept (ms; 0: none), then per Trigger:
--   expired now}: until that entry reaches maxAge, only new entries (maxEvents) or
--   released holds give the next call anything to do.
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

local now, max_age, max_events, step = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 0} end

local groups = {}
local ok, infos = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(infos) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    groups[info['name']] = info['last-delivered-id']
  end
end

-- The trim point: entries with a smaller id go.
local cut = string.format('%d-0', math.max(0, now - max_age))
local length = redis.call('XLEN', KEYS[1])
if length > max_events then
  local over = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(length - max_events, step))
  if #over > 0 then
    local by_count = after(over[#over][1])
    if less(cut, by_count) then cut = by_count end
  end
end
-- Never past an entry a Trigger holds.
for i = 5, #ARGV do
  local group = ARGV[i]
  if groups[group] then
    local pending = redis.call('XPENDING', KEYS[1], group)
    if pending[1] > 0 and less(pending[2], cut) then cut = pending[2] end
  end
  for _, key in ipairs({KEYS[3 * (i - 4) - 1], KEYS[3 * (i - 4)]}) do
    local held = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if held[2] then
      local floor = string.format('%d-0', tonumber(held[2]))
      if less(floor, cut) then cut = floor end
    end
  end
end

local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first then return {0, 0} end
if not less(first[1], cut) then return {0, (parse(first[1]))} end
-- At most `step` entries per call, whichever rule set the cut (maxAge can put it
-- millions of entries in): the counts of what each Trigger loses below stay exact.
local head = redis.call('XRANGE', KEYS[1], '-', '(' .. cut, 'COUNT', step + 1)
if #head > step then cut = head[step + 1][1] end

-- What each Trigger had not read yet and is about to lose.
local out = {0, 0}
for i = 5, #ARGV do
  local group, lost = ARGV[i], 0
  local last = groups[group]
  if last and less(last, cut) then
    local start = after(last)
    if less(start, first[1]) then start = first[1] end
    lost = #redis.call('XRANGE', KEYS[1], start, '(' .. cut, 'COUNT', step)
    if lost > 0 then redis.call('HINCRBY', KEYS[3 * (i - 4) + 1], {{STATE_EXPIRED}}, lost) end
  end
  out[#out + 1] = lost
end
out[1] = redis.call('XTRIM', KEYS[1], 'MINID', cut)
-- The index by millisecond: below the first entry kept (with none kept, through the
-- last one trimmed), so an id that shared a trimmed entry's ms does not linger.
local kept = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local below
if kept then
  below = '(' .. parse(kept[1])
else
  local ms, seq = parse(cut)
  below = seq > 0 and tostring(ms) or '(' .. ms
end
redis.call('ZREMRANGEBYSCORE', KEYS[#KEYS], '-inf', below)
out[2] = kept and parse(kept[1]) or 0
return out
