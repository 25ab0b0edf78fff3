-- backoff_recover: end Backoff; every scheduled retry comes due now, but delayed
-- events keep their due time (tidings.dispatcher.backoff_state).
-- KEYS: [1] trigger state HASH, [2] retry ZSET, [3] delayed ZSET.
-- ARGV: none.
-- Returns how many retries were made due (0 when it was not in Backoff).
--#include _now.lua
if redis.call('HGET', KEYS[1], {{STATE_STATE}}) ~= {{BACKOFF}} then return 0 end
redis.call('HSET', KEYS[1], {{STATE_STATE}}, {{DELIVERING}}, {{STATE_FAILURES}}, 0)
-- The subscriber starts with a clean record: the failures before Backoff are history.
redis.call('HDEL', KEYS[1], {{STATE_PROBE_DUE}}, {{STATE_PROBE_INTERVAL}}, {{STATE_FAILING_SINCE}},
  {{STATE_WINDOW_START}}, {{STATE_WINDOW_ATTEMPTS}}, {{STATE_WINDOW_FAILURES}},
  {{STATE_PREVIOUS_ATTEMPTS}}, {{STATE_PREVIOUS_FAILURES}}, {{STATE_RATIO_SINCE}})
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
local due = 0
for _, id in ipairs(ids) do
  if not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[2], now, id)
    due = due + 1
  end
end
return due
