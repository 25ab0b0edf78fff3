-- backoff_claim: take the turn to probe a Trigger in Backoff, one replica at a time
-- (tidings.dispatcher.backoff_state).
-- KEYS: [1] trigger state HASH.
-- ARGV: [1] lease ms (the next probe is due after it, should this one die).
-- Returns -1: not in Backoff; 0: this caller probes now; else ms until the next
-- probe is due.
--#include _now.lua
local s = redis.call('HMGET', KEYS[1], {{STATE_STATE}}, {{STATE_PROBE_DUE}})
if s[1] ~= {{BACKOFF}} then return -1 end
local due = tonumber(s[2] or '0')
if due > now then return due - now end
redis.call('HSET', KEYS[1], {{STATE_PROBE_DUE}}, now + tonumber(ARGV[1]))
return 0
