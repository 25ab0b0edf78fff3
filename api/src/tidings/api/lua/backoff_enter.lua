-- backoff_enter: put a Trigger that keeps failing in Backoff
-- (tidings.dispatcher.backoff_state).
-- KEYS: [1] trigger state HASH.
-- ARGV: [1] first probe interval ms, [2] consecutive failures that mean Backoff.
-- Returns 1 when it entered Backoff now, else 0.
--#include _now.lua
local s = redis.call('HMGET', KEYS[1], {{STATE_STATE}}, {{STATE_FAILURES}})
if s[1] == {{BACKOFF}} or tonumber(s[2] or '0') < tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], {{STATE_STATE}}, {{BACKOFF}}, {{STATE_PROBE_INTERVAL}}, ARGV[1],
  {{STATE_PROBE_DUE}}, now + tonumber(ARGV[1]))
return 1
