-- replay_cancel: forget a deleted Replay's run and withdraw what it handed over
-- (tidings.api.replays.cancel_run): its runner stops at its next page, and the
-- events it handed to the Trigger that are not delivered yet are not delivered.
-- KEYS: [1] the Trigger's replay runs HASH, [2] replay owners HASH, [3] retry ZSET,
--   [4] replay HASH (the copies), [5] attempts HASH.
-- ARGV: [1] Replay name, [2] "1": withdraw its events (a Replay of the source's
--   stream; dead letters are not withdrawn: they left the DLQ and would be lost).
-- An event of the Replay still due (retry score not after now) is not leased: it
-- is withdrawn now. One scored later is leased to a dispatcher, or waits for a
-- retry: its owner becomes "" and the settle or fetch script that next sees it
-- withdraws it (a delivery under way ends; it is not retried).
-- Returns {run fields removed, events withdrawn, events marked to withdraw}.
local K_RUNS, K_OWNERS, K_RETRY, K_REPLAY, K_ATTEMPTS = 1, 2, 3, 4, 5
--#include _now.lua
--#include _replayed.lua
local name = ARGV[1]
local fields = {}
for _, field in ipairs({ {{RUN_UID}}, {{RUN_CURSOR}}, {{RUN_END}}, {{RUN_TOTAL}}, {{RUN_SENT}},
    {{RUN_SKIPPED}}, {{RUN_DELIVERED}}, {{RUN_FAILED}}, {{RUN_STARTED}}, {{RUN_SCANNED}},
    {{RUN_COMPLETED}} }) do
  fields[#fields + 1] = name .. '|' .. field
end
local removed = redis.call('HDEL', KEYS[K_RUNS], unpack(fields))

local withdrawn, marked = 0, 0
local owners = {}
if ARGV[2] == '1' then owners = redis.call('HGETALL', KEYS[K_OWNERS]) end
for i = 1, #owners, 2 do
  local id = owners[i]
  if owners[i + 1] == name then
    local due = tonumber(redis.call('ZSCORE', KEYS[K_RETRY], id))
    if due and due > now then
      redis.call('HSET', KEYS[K_OWNERS], id, '')
      marked = marked + 1
    else
      replay_withdraw(id)
      withdrawn = withdrawn + 1
    end
  end
end
return {removed, withdrawn, marked}
