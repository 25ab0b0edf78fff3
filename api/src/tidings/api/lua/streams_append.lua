-- streams_append: append events to a source's stream, each at most once per dedupe
-- window (tidings.dispatcher.streams).
-- KEYS: [1] the source's stream, [2] its event index ZSET, [3 ..] one dedupe key per
--   event (keys.dedupe: the event's id follows "}:seen:").
-- ARGV: [1] dedupe window ms, then per event i (1, 2, ...): [2i] its stored JSON,
--   [2i + 1] its ingest time (ms).
-- Returns per event: the new stream id, or "=" .. the id it was first stored as.
local out = {}
for i = 3, #KEYS do
  local seen = redis.call('GET', KEYS[i])
  if seen then
    out[i - 2] = '=' .. seen
  else
    local j = 2 * i - 4
    local id = redis.call('XADD', KEYS[1], '*', {{FIELD_EVENT}}, ARGV[j], {{FIELD_TIME}}, ARGV[j + 1])
    redis.call('SET', KEYS[i], id, 'PX', ARGV[1])
    local _, tag_end = string.find(KEYS[i], '}:seen:', 1, true)
    redis.call('ZADD', KEYS[2], tonumber(string.match(id, '^(%d+)')), string.sub(KEYS[i], tag_end + 1))
    out[i - 2] = id
  end
end
return out
