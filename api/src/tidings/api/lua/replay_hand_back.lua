-- replay_hand_back: hand one page of a Replay's events to its Trigger as due
-- retries, delivered from a copy, and move the Replay's cursor past the page, in
-- one step (tidings.dispatcher.replays): a crash before it changes nothing, after
-- it nothing of the page is handed over again.
-- KEYS: [1] dead-letter stream, [2] retry ZSET, [3] attempts HASH, [4] replay HASH
--   (the copies), [5] replay owners HASH, [6] replay runs HASH, [7] replayed dead
--   letters HASH (the DLQ entries they were, put back if the Replay is deleted).
-- ARGV: [1] Replay name, [2] its uid, [3] the cursor this page starts after,
--   [4] the cursor after the page, [5] entries the runner skipped (filtered out,
--   nothing stored), [6] "1" when the page ends the window, then per event 3:
--   stream id, DLQ id ("" from the stream), the CloudEvent JSON to deliver.
-- Returns {sent, skipped}, or {-1, 0} when the run is gone (deleted, recreated),
-- {-2, 0} when another runner moved the cursor meanwhile (nothing changed).
--#include _now.lua
local name = ARGV[1]
local function f(field) return name .. '|' .. field end
if redis.call('HGET', KEYS[6], f({{RUN_UID}})) ~= ARGV[2] then return {-1, 0} end
if redis.call('HGET', KEYS[6], f({{RUN_CURSOR}})) ~= ARGV[3] then return {-2, 0} end
local sent, skipped = 0, tonumber(ARGV[5])
for i = 7, #ARGV, 3 do
  local id, dlq_id, event = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('ZSCORE', KEYS[2], id) then
    -- Already due or retrying (or sent by another Replay): one delivery is enough.
    skipped = skipped + 1
  else
    if dlq_id ~= '' then
      local entry = redis.call('XRANGE', KEYS[1], dlq_id, dlq_id)[1]
      if entry then redis.call('HSET', KEYS[7], id, cjson.encode(entry[2])) end
    end
    redis.call('HSET', KEYS[4], id, now .. ' ' .. event)
    redis.call('HSET', KEYS[5], id, name)
    redis.call('HDEL', KEYS[3], id)
    redis.call('ZADD', KEYS[2], now, id)
    sent = sent + 1
  end
  if dlq_id ~= '' then redis.call('XDEL', KEYS[1], dlq_id) end
end
redis.call('HINCRBY', KEYS[6], f({{RUN_SENT}}), sent)
redis.call('HINCRBY', KEYS[6], f({{RUN_SKIPPED}}), skipped)
redis.call('HSET', KEYS[6], f({{RUN_CURSOR}}), ARGV[4])
if ARGV[6] == '1' then redis.call('HSET', KEYS[6], f({{RUN_SCANNED}}), 1) end
return {sent, skipped}
