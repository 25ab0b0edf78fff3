-- backoff_recover: end Backoff; every scheduled retry comes due now, but delayed
-- events keep their due time (tidings.dispatcher.backoff_state).
-- KEYS: [1] trigger state HASH, [2] retry ZSET, [3] delayed ZSET.
-- ARGV: none.
-- Returns how many retries were made due (0 when it was not in Backoff).
--#include _now.lua
if redis.call('HGET', KEYS[1], {{STATE_STATE}}) ~= {{BACKOFF}} then return 0 end
redis.call('HSET', KEYS[1], {{STATE_STATE}}, {{DELIVERING}}, {{STATE_FAILURES}}, 0)
redis.call('HDEL', KEYS[1], {{STATE_PROBE_DUE}}, {{STATE_PROBE_INTERVAL}})
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local due = 0
for _, id in ipairs(ids) do
  if not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[2], now, id)
    due = due + 1
  end
end
return due
