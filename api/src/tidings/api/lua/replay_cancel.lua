-- replay_cancel: forget a deleted Replay's run and withdraw what it handed over
-- (tidings.api.replays.cancel_run): its runner stops at its next page, and the
-- events it handed to the Trigger that are not delivered yet are not delivered;
-- those it took from the DLQ go back there, as they were.
-- KEYS: [1] the Trigger's replay runs HASH, [2] replay owners HASH, [3] retry ZSET,
--   [4] replay HASH (the copies), [5] attempts HASH, [6] dead-letter stream,
--   [7] trigger state HASH, [8] replayed dead letters HASH, [9] replay leased SET.
-- ARGV: [1] Replay name, [2] the DLQ's max entries.
-- An event of the Replay not leased (due, or waiting for a retry) is withdrawn
-- now. One leased to a dispatcher (an attempt under way) is marked: its owner
-- becomes "", and when that attempt settles (cursor_settle.lua) it is acked if
-- delivered, else withdrawn instead of retried; if the lease runs out first, the
-- fetch that finds it due withdraws it (cursor_fetch.lua).
-- Returns {run fields removed, events withdrawn, events marked to withdraw}.
local K_RUNS, K_OWNERS, K_RETRY, K_REPLAY, K_ATTEMPTS, K_DLQ, K_STATE, K_REPLAY_DLQ, K_LEASED =
  1, 2, 3, 4, 5, 6, 7, 8, 9
--#include _replayed.lua
local name, dlq_max = ARGV[1], tonumber(ARGV[2])
local fields = {}
for _, field in ipairs({ {{RUN_UID}}, {{RUN_CURSOR}}, {{RUN_END}}, {{RUN_TOTAL}}, {{RUN_SENT}},
    {{RUN_SKIPPED}}, {{RUN_DELIVERED}}, {{RUN_FAILED}}, {{RUN_STARTED}}, {{RUN_SCANNED}},
    {{RUN_COMPLETED}} }) do
  fields[#fields + 1] = name .. '|' .. field
end
local removed = redis.call('HDEL', KEYS[K_RUNS], unpack(fields))

local withdrawn, marked = 0, 0
local owners = redis.call('HGETALL', KEYS[K_OWNERS])
for i = 1, #owners, 2 do
  local id = owners[i]
  if owners[i + 1] == name then
    if redis.call('SISMEMBER', KEYS[K_LEASED], id) == 1 then
      redis.call('HSET', KEYS[K_OWNERS], id, '')
      marked = marked + 1
    else
      replay_withdraw(id, dlq_max)
      withdrawn = withdrawn + 1
    end
  end
end
return {removed, withdrawn, marked}
