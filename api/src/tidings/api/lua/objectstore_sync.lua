-- objectstore_sync: a poll's changes to an object-store source, each key's new
-- state and its event in one atomic step (tidings.sources.objectstore).
-- A change applies only while the key still holds the state it was diffed
-- against, so a repeat (after a crash, or by a twin replica) writes nothing twice.
-- KEYS: [1] the source's stream, [2] adapter state HASH, [3] adapter objects HASH
--   (object key -> its stored version), [4] the source's event index ZSET
--   (event id -> the ms of its stream id, for `tidings trace`).
-- ARGV: [1] ingest time ms, [2] state pairs, [3] changes (the counts of what
--   follows); then the state pairs (field, value), and per change: the object
--   key, the state it was diffed against ("" = absent), its new state ("" = gone),
--   the event's stored JSON ("" = none wanted), the event's id.
-- Returns {appended, already applied, conflicts (the key held another state)}.
local n_state, n_changes = tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 4
for _ = 1, n_state do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local appended, applied, conflicts = 0, 0, 0
for _ = 1, n_changes do
  local key, old, new, event = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local event_id = ARGV[i + 4]
  local current = redis.call('HGET', KEYS[3], key) or ''
  if current == new then
    applied = applied + 1
  elseif current ~= old then
    conflicts = conflicts + 1
  else
    if new == '' then
      redis.call('HDEL', KEYS[3], key)
    else
      redis.call('HSET', KEYS[3], key, new)
    end
    if event ~= '' then
      local id = redis.call('XADD', KEYS[1], '*', {{FIELD_EVENT}}, event, {{FIELD_TIME}}, ARGV[1])
      redis.call('ZADD', KEYS[4], tonumber(string.match(id, '^(%d+)')), event_id)
      appended = appended + 1
    end
  end
  i = i + 5
end
return {appended, applied, conflicts}
