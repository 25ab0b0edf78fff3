-- streams_append: append events to a source's stream, each at most once per dedupe
-- window (tidings.dispatcher.streams).
-- KEYS: [1] the source's stream, [2] its event index ZSET, [3 ..] one dedupe key per
--   event.
-- ARGV: [1] dedupe window ms, then per event k (1, 2, ...): [4k - 2] its stored JSON,
--   [4k - 1] its ingest time (ms), [4k] its id (for the index), [4k + 1] its due time
--   (ms) if delayed, else "".
-- Returns per event: the new stream id, or "=" .. the id it was first stored as.
local out = {}
for i = 3, #KEYS do
  local seen = redis.call('GET', KEYS[i])
  if seen then
    out[i - 2] = '=' .. seen
  else
    local j = 4 * (i - 2) - 2
    local id
    if ARGV[j + 3] == '' then
      id = redis.call('XADD', KEYS[1], '*', {{FIELD_EVENT}}, ARGV[j], {{FIELD_TIME}}, ARGV[j + 1])
    else
      id = redis.call('XADD', KEYS[1], '*', {{FIELD_EVENT}}, ARGV[j], {{FIELD_TIME}}, ARGV[j + 1],
        {{FIELD_DUE}}, ARGV[j + 3])
    end
    redis.call('SET', KEYS[i], id, 'PX', ARGV[1])
    redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^(%d+)')), ARGV[j + 2])
    out[i - 2] = id
  end
end
return out
