-- backoff_probe_failed: double the probe interval, up to its cap, and set the next
-- probe's due time (tidings.dispatcher.backoff_state).
-- KEYS: [1] trigger state HASH.
-- ARGV: [1] first interval ms, [2] cap ms.
-- Returns the new interval (ms).
--#include _now.lua
local interval = tonumber(redis.call('HGET', KEYS[1], {{STATE_PROBE_INTERVAL}}) or ARGV[1])
interval = math.min(math.max(interval * 2, tonumber(ARGV[1])), tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], {{STATE_PROBE_INTERVAL}}, interval, {{STATE_PROBE_DUE}}, now + interval)
return interval
