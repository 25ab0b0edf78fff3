-- backoff_publish: refresh what a Trigger's state HASH tells the operator (state,
-- lag, pending, retries, updated) and read its counts
-- (tidings.dispatcher.backoff_state).
-- KEYS: [1] the source's stream, [2] trigger state HASH, [3] retry ZSET, [4] parked
--   ZSET, [5] dead-letter stream.
-- ARGV: [1] group, [2] paused "1"/"0", [3] now ms (the publishing replica's clock).
-- Returns {state, lag, pending, retries, parked, dlq length, deadLettered, expired}.
local lag, pending = 0, 0
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      pending = info['pending'] or 0
      if info['lag'] then
        lag = info['lag']
      else  -- unknown after deletions: count, bounded
        lag = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 10000)
      end
    end
  end
end
local retries = redis.call('ZCARD', KEYS[3])
local parked = redis.call('ZCARD', KEYS[4])
local state = redis.call('HGET', KEYS[2], {{STATE_STATE}})
if ARGV[2] == '1' then
  state = {{PAUSED}}
elseif state ~= {{BACKOFF}} then
  state = {{DELIVERING}}
end
local total = lag + retries + parked
redis.call('HSET', KEYS[2], {{STATE_STATE}}, state, {{STATE_LAG}}, total, {{STATE_PENDING}}, pending,
  {{STATE_RETRIES}}, retries, {{STATE_UPDATED}}, ARGV[3])
local counts = redis.call('HMGET', KEYS[2], {{STATE_DEAD_LETTERED}}, {{STATE_EXPIRED}})
return {state, total, pending, retries, parked, redis.call('XLEN', KEYS[5]),
  tonumber(counts[1] or '0'), tonumber(counts[2] or '0')}
