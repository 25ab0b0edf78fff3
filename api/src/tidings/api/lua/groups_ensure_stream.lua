-- groups_ensure_stream: create a source's stream, empty (no entry, no consumer
-- group), unless it exists (tidings.api.groups).
-- KEYS: [1] the stream.
-- ARGV: none.
-- Returns 1 when it created the stream, else 0.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('XGROUP', 'CREATE', KEYS[1], {{PLACEHOLDER_GROUP}}, '$', 'MKSTREAM')
redis.call('XGROUP', 'DESTROY', KEYS[1], {{PLACEHOLDER_GROUP}})
return 1
