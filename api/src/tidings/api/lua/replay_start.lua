-- replay_start: begin a Replay's run, once per Replay object (tidings.dispatcher.replays).
-- KEYS: [1] the Trigger's replay runs HASH.
-- ARGV: [1] Replay name, [2] its uid, [3] first cursor (the id before the window),
--   [4] the window's end (exclusive), [5] total.
-- Returns 1 when started now, 0 when this uid had started already (a resumed run).
--#include _now.lua
local name = ARGV[1]
local function f(field) return name .. '|' .. field end
if redis.call('HGET', KEYS[1], f({{RUN_UID}})) == ARGV[2] then return 0 end
-- A Replay deleted and created again under its name starts afresh.
redis.call('HDEL', KEYS[1], f({{RUN_SCANNED}}), f({{RUN_COMPLETED}}))
redis.call('HSET', KEYS[1], f({{RUN_UID}}), ARGV[2], f({{RUN_CURSOR}}), ARGV[3],
  f({{RUN_END}}), ARGV[4], f({{RUN_TOTAL}}), ARGV[5], f({{RUN_SENT}}), 0,
  f({{RUN_SKIPPED}}), 0, f({{RUN_DELIVERED}}), 0, f({{RUN_FAILED}}), 0, f({{RUN_STARTED}}), now)
return 1
