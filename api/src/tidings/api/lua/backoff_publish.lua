-- backoff_publish: refresh what a Trigger's state HASH tells the operator (state,
-- lag, pending, retries, updated, the filter's counts) and read its counts
-- (tidings.dispatcher.backoff_state).
-- KEYS: [1] the source's stream, [2] trigger state HASH, [3] retry ZSET, [4] parked
--   ZSET, [5] dead-letter stream, [6] held ZSET, [7] delayed ZSET.
-- ARGV: [1] group, [2] paused "1"/"0", [3] now ms (the publishing replica's clock),
--   [4] the Trigger's maxAge ms, [5] the source's retention maxAge ms (0: unknown),
--   [6] the route generation the filter counts are of, [7] events the filter
--   expression evaluated since the last publish, [8] of those, failures, [9] the last
--   failure's time (RFC 3339), [10] its reason, [11] its message, [12] the span of the
--   filter window, ms, [13] the Trigger's delivery.delay ms (0: none).
-- The filter window: failures and evaluations of the current span and the one
-- before it (Redis's clock); the operator's FilterErrors condition reads both. A
-- newer generation (the filter changed) starts the window afresh; counts of an
-- older one (a replica not yet updated) go into the totals only.
-- Returns {state, lag, pending, retries, parked, dlq length, deadLettered, expired,
--   oldest undelivered ms (0: none), when it will be lost ms (0: none), delayed}:
--   the oldest undelivered is the earliest due time (the time stored, or a delayed
--   event's due time) of the Trigger's pending, held (retries, parked), delayed-and-due
--   and unread entries; an event not due yet is not undelivered. When it will be lost:
--   the earliest due time + maxAge and, for an unread (due or not), held or delayed
--   and due entry, its time stored + the source's retention (retention_trim.lua
--   takes them all). Then 1 when this is the Trigger's first report (no dispatcher
--   had published one: the operator rests on a Trigger without a report until news
--   of it, tidings.dispatcher.backoff_state.news_for_status), else 0.
--#include _now.lua
local lag, pending, last = 0, 0, nil
local function id_ms(id) return tonumber(string.match(id, '^(%d+)')) end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      pending = info['pending'] or 0
      last = info['last-delivered-id']
      if info['lag'] then
        lag = info['lag']
      else  -- unknown after deletions: count, bounded
        lag = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 10000)
      end
    end
  end
end
-- Delayed events count in lag only once due; they are no retries either.
local delayed = redis.call('ZCOUNT', KEYS[7], '(' .. ARGV[3], '+inf')
local retries = redis.call('ZCARD', KEYS[3]) - delayed
local parked = redis.call('ZCARD', KEYS[4])
local state = redis.call('HGET', KEYS[2], {{STATE_STATE}})
if ARGV[2] == '1' then
  state = {{PAUSED}}
elseif state ~= {{BACKOFF}} then
  state = {{DELIVERING}}
end
local total = lag + retries + parked

-- The oldest undelivered entry, and when it will be lost.
local max_age, retention = tonumber(ARGV[4]), tonumber(ARGV[5])
local delay = tonumber(ARGV[13] or '0')
local now_ms = tonumber(ARGV[3])
local oldest, expires = 0, 0
local function lose_at(ms)
  if ms > 0 and (expires == 0 or ms < expires) then expires = ms end
end
-- An entry's due time, as cursor_fetch.lua decides it: its FIELD_DUE or its ingest
-- time + the Trigger's delay, whichever is later; never before it was stored.
local function due_of(id, fields)
  local due, ingested = id_ms(id), 0
  for i = 1, #fields, 2 do
    if fields[i] == {{FIELD_DUE}} then
      local d = tonumber(fields[i + 1]) or 0
      if d > due then due = d end
    elseif fields[i] == {{FIELD_TIME}} then ingested = tonumber(fields[i + 1]) or 0 end
  end
  if delay > 0 and ingested + delay > due then due = ingested + delay end
  return due
end
local function fields_of(id)
  local entry = redis.call('XRANGE', KEYS[1], id, id)[1]
  return entry and entry[2] or {}
end
-- Due at `due` and not delivered: a candidate for the oldest (only once due).
local function consider(due)
  if due <= 0 or due > now_ms then return end
  if oldest == 0 or due < oldest then oldest = due end
  lose_at(due + max_age)
end
-- The earliest due time among entries in stream order, each {id, fields or nil} as
-- `nxt` returns them (nil: no more), SCAN of them at most: a due time is never before
-- the entry's time + delay, so the walk ends once that passes the best so far (at
-- the second entry without deliverafter).
local SCAN = 32
local function earliest(nxt, unread)
  local best = 0
  for _ = 1, SCAN do
    local entry = nxt()
    if not entry then break end
    local id = entry[1]
    local ms = id_ms(id)
    if best > 0 and ms + delay >= best then break end
    local due = due_of(id, entry[2] or fields_of(id))
    -- Unread, retrying or parked, retention can trim it (retention_trim.lua); unread,
    -- due or not.
    if retention > 0 then lose_at(ms + retention) end
    if unread and due > now_ms then lose_at(due + max_age) end
    if due <= now_ms and (best == 0 or due < best) then best = due end
  end
  consider(best)
end
if last then
  local pel = redis.call('XPENDING', KEYS[1], ARGV[1])
  if pel[1] > 0 then consider(due_of(pel[2], fields_of(pel[2]))) end
  -- One entry at a time: stored events can be large.
  local after = last
  earliest(function()
    local entry = redis.call('XRANGE', KEYS[1], '(' .. after, '+', 'COUNT', 1)[1]
    if entry then after = entry[1] end
    return entry
  end, true)
end
-- Held entries (retries, parked, delayed events fetched once) are all due.
local held, at = redis.call('ZRANGE', KEYS[6], 0, SCAN - 1), 0
earliest(function()
  at = at + 1
  return held[at] and {held[at]}
end, false)
-- Delayed events due and not fetched yet (a Trigger in Backoff fetches nothing);
-- retention can trim them too (retention_trim.lua): the earliest due one's time
-- stored stands for theirs (the earliest stored may be older, with deliverafter).
local due_delayed = redis.call('ZRANGEBYSCORE', KEYS[7], '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, 1)
if due_delayed[2] then
  consider(tonumber(due_delayed[2]))
  if retention > 0 then lose_at(id_ms(due_delayed[1]) + retention) end
end

local first = redis.call('HEXISTS', KEYS[2], {{STATE_UPDATED}}) == 0
redis.call('HSET', KEYS[2], {{STATE_STATE}}, state, {{STATE_LAG}}, total, {{STATE_PENDING}}, pending,
  {{STATE_RETRIES}}, retries, {{STATE_DELAYED}}, delayed, {{STATE_UPDATED}}, ARGV[3],
  {{STATE_OLDEST}}, oldest,
  {{STATE_EXPIRES}}, expires)
-- The filter's counts.
local generation, checked, failed = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local span = tonumber(ARGV[12])
if checked > 0 then redis.call('HINCRBY', KEYS[2], {{STATE_FILTER_CHECKED}}, checked) end
if failed > 0 then
  redis.call('HINCRBY', KEYS[2], {{STATE_FILTER_ERRORS}}, failed)
  redis.call('HSET', KEYS[2], {{STATE_FILTER_LAST_TIME}}, ARGV[9],
    {{STATE_FILTER_LAST_REASON}}, ARGV[10], {{STATE_FILTER_LAST_MESSAGE}}, ARGV[11])
end
local window = redis.call('HMGET', KEYS[2], {{STATE_FILTER_GENERATION}}, {{STATE_FILTER_SPAN_START}})
local counted = tonumber(window[1] or '-1')
local start = tonumber(window[2] or '0')
if generation > counted then
  redis.call('HSET', KEYS[2], {{STATE_FILTER_GENERATION}}, generation,
    {{STATE_FILTER_SPAN_START}}, now, {{STATE_FILTER_SPAN_CHECKED}}, 0,
    {{STATE_FILTER_SPAN_ERRORS}}, 0, {{STATE_FILTER_PREVIOUS_CHECKED}}, 0,
    {{STATE_FILTER_PREVIOUS_ERRORS}}, 0)
  counted, start = generation, now
elseif now - start >= span then
  -- The span ended: it becomes the previous one (or nothing, when two have passed).
  local before = {0, 0}
  if now - start < 2 * span then
    before = redis.call('HMGET', KEYS[2], {{STATE_FILTER_SPAN_CHECKED}}, {{STATE_FILTER_SPAN_ERRORS}})
  end
  redis.call('HSET', KEYS[2], {{STATE_FILTER_SPAN_START}}, now, {{STATE_FILTER_SPAN_CHECKED}}, 0,
    {{STATE_FILTER_SPAN_ERRORS}}, 0, {{STATE_FILTER_PREVIOUS_CHECKED}}, before[1] or 0,
    {{STATE_FILTER_PREVIOUS_ERRORS}}, before[2] or 0)
end
if generation == counted then
  if checked > 0 then redis.call('HINCRBY', KEYS[2], {{STATE_FILTER_SPAN_CHECKED}}, checked) end
  if failed > 0 then redis.call('HINCRBY', KEYS[2], {{STATE_FILTER_SPAN_ERRORS}}, failed) end
end

local counts = redis.call('HMGET', KEYS[2], {{STATE_DEAD_LETTERED}}, {{STATE_EXPIRED}})
return {state, total, pending, retries, parked, redis.call('XLEN', KEYS[5]),
  tonumber(counts[1] or '0'), tonumber(counts[2] or '0'), oldest, expires, delayed,
  first and 1 or 0}
