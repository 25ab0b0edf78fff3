-- replay_cancel: forget a deleted Replay's run (tidings.operator.replays): its
-- runner stops at its next page, and what it had handed over is no longer counted.
-- KEYS: [1] the Trigger's replay runs HASH.
-- ARGV: [1] Replay name.
-- Returns the fields removed.
local name = ARGV[1]
local fields = {}
for _, field in ipairs({ {{RUN_UID}}, {{RUN_CURSOR}}, {{RUN_END}}, {{RUN_TOTAL}}, {{RUN_SENT}},
    {{RUN_SKIPPED}}, {{RUN_DELIVERED}}, {{RUN_FAILED}}, {{RUN_STARTED}}, {{RUN_SCANNED}},
    {{RUN_COMPLETED}} }) do
  fields[#fields + 1] = name .. '|' .. field
end
return redis.call('HDEL', KEYS[1], unpack(fields))
