-- deadletter_hand_back: move dead letters back to their Trigger as due retries,
-- delivered from a copy in the replay HASH (tidings.dispatcher.deadletter, used
-- by `tidings replay`).
-- KEYS: [1] dead-letter stream, [2] the source's stream, [3] retry ZSET,
--   [4] attempts HASH, [5] replay HASH.
-- ARGV: the DLQ entry ids.
-- Returns {handed back, kept (no event stored anywhere)}.
--#include _now.lua
--#include _entry_event.lua
local moved, kept = 0, 0
for _, dlq_id in ipairs(ARGV) do
  local entry = redis.call('XRANGE', KEYS[1], dlq_id, dlq_id)[1]
  if entry then
    local fields = {}
    for i = 1, #entry[2], 2 do fields[entry[2][i]] = entry[2][i + 1] end
    local id, event = fields[{{DLQ_STREAM_ID}}], fields[{{DLQ_EVENT}}] or ''
    if event == '' and id then  -- lost when dead-lettered; the source may still have it
      local source = redis.call('XRANGE', KEYS[2], id, id)[1]
      if source then event = entry_event(source[2]) or '' end
    end
    if event ~= '' then
      -- Already due (e.g. two dead letters of one event): one delivery is enough.
      if not redis.call('ZSCORE', KEYS[3], id) then
        redis.call('HSET', KEYS[5], id, now .. ' ' .. event)
        redis.call('HDEL', KEYS[4], id)
        redis.call('ZADD', KEYS[3], now, id)
      end
      redis.call('XDEL', KEYS[1], dlq_id)
      moved = moved + 1
    else
      kept = kept + 1
    end
  end
end
return {moved, kept}
