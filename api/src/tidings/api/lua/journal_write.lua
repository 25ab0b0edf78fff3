-- journal_write: a source adapter's events and resume point in one atomic step,
-- skipping events at or below the stored guard position (tidings.sources.journal).
-- KEYS: [1] the source's stream, [2] adapter state HASH, [3] adapter objects HASH
--   (may be unused), [4] the source's event index ZSET.
-- ARGV: [1] guard field ("": no guard), [2] ingest time ms, [3] state pairs,
--   [4] object sets, [5] object deletions, [6] events (the counts of what follows);
--   then the state pairs (field, value), object pairs (uid, value), object uids,
--   and per event: its position, its id, its stored JSON.
-- Returns {appended, skipped, first new stream id, last new stream id} ("" if none).
local guard_field = ARGV[1]
local guard = ''
if guard_field ~= '' then
  guard = redis.call('HGET', KEYS[2], guard_field) or ''
end
local n_state, n_set, n_del, n_events =
  tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local i = 7
for _ = 1, n_state do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_set do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_del do
  redis.call('HDEL', KEYS[3], ARGV[i])
  i = i + 1
end
local appended, skipped, last = 0, 0, guard
local first_id, last_id = '', ''
for _ = 1, n_events do
  local position = ARGV[i]
  if guard_field ~= '' and position <= last then
    skipped = skipped + 1
  else
    last_id = redis.call('XADD', KEYS[1], '*', {{FIELD_EVENT}}, ARGV[i + 2], {{FIELD_TIME}}, ARGV[2])
    redis.call('ZADD', KEYS[4], tonumber(string.match(last_id, '^(%d+)')), ARGV[i + 1])
    if first_id == '' then first_id = last_id end
    appended = appended + 1
    if guard_field ~= '' then last = position end
  end
  i = i + 3
end
if guard_field ~= '' and last ~= guard then
  redis.call('HSET', KEYS[2], guard_field, last)
end
return {appended, skipped, first_id, last_id}
