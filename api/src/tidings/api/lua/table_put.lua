-- table_put: write one routing table entry only when it changes, bump the table's
-- version and announce it (tidings.api.table).
-- KEYS: [1] the table's HASH (routes or sources), [2] the version counter.
-- ARGV: [1] the entry ("ns/name"), [2] its value ("" deletes it).
-- Returns the new version, or -1 when nothing changed.
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '' then
  if not current then return -1 end
  redis.call('HDEL', KEYS[1], ARGV[1])
elseif current == ARGV[2] then
  return -1
else
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
end
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', {{TABLE_CHANGED}}, version)
return version
