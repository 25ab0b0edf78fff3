-- backoff_enter: put a Trigger whose subscriber looks down in Backoff (the
-- settle script decides that; tidings.dispatcher.backoff_state).
-- KEYS: [1] trigger state HASH.
-- ARGV: [1] first probe interval ms.
-- Returns 1 when it entered Backoff now, else 0 (it already was).
--#include _now.lua
if redis.call('HGET', KEYS[1], {{STATE_STATE}}) == {{BACKOFF}} then return 0 end
redis.call('HSET', KEYS[1], {{STATE_STATE}}, {{BACKOFF}}, {{STATE_PROBE_INTERVAL}}, ARGV[1],
  {{STATE_PROBE_DUE}}, now + tonumber(ARGV[1]))
return 1
