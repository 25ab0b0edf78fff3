-- Fragment: replayed(id), the fields of a replayed dead letter's copy in the
-- replay HASH ({FIELD_EVENT, json, FIELD_TIME, replay ms}), or nil
-- (tidings.dispatcher.deadletter).
-- KEYS: K_REPLAY (_cursor_keys.lua). ARGV: none.
local function replayed(id)
  local copy = redis.call('HGET', KEYS[K_REPLAY], id)
  if not copy then return nil end
  local space = string.find(copy, ' ', 1, true)
  return { {{FIELD_EVENT}}, string.sub(copy, space + 1), {{FIELD_TIME}}, string.sub(copy, 1, space - 1) }
end
