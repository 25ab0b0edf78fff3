-- Fragment: events a Replay (or `tidings replay`) handed to the Trigger, delivered
-- from a copy in the replay HASH (tidings.dispatcher.deadletter,
-- tidings.dispatcher.replays).
-- KEYS: K_REPLAY, and for the others K_OWNERS, K_RETRY, K_ATTEMPTS, K_DLQ,
-- K_STATE, K_REPLAY_DLQ, K_LEASED (_cursor_keys.lua names them; replay_cancel.lua
-- its own). ARGV: none.
--   replayed(id): the fields of a replayed event's copy ({FIELD_EVENT, json,
--     FIELD_TIME, replay ms}), or nil;
--   replay_cancelled(id): its Replay was deleted while the event was leased
--     (replay_cancel.lua marks its owner "");
--   replay_withdraw(id, dlq_max): undo the hand-over: not delivered, not retried;
--     one that came from the DLQ goes back there as it was (capped at dlq_max).
--#include _deadletter_add.lua
local function replayed(id)
  local copy = redis.call('HGET', KEYS[K_REPLAY], id)
  if not copy then return nil end
  local space = string.find(copy, ' ', 1, true)
  return { {{FIELD_EVENT}}, string.sub(copy, space + 1), {{FIELD_TIME}}, string.sub(copy, 1, space - 1) }
end

local function replay_cancelled(id)
  return redis.call('HGET', KEYS[K_OWNERS], id) == ''
end

local function replay_withdraw(id, dlq_max)
  local entry = redis.call('HGET', KEYS[K_REPLAY_DLQ], id)
  if entry then deadletter_append(cjson.decode(entry), dlq_max) end
  redis.call('ZREM', KEYS[K_RETRY], id)
  redis.call('HDEL', KEYS[K_REPLAY], id)
  redis.call('HDEL', KEYS[K_OWNERS], id)
  redis.call('HDEL', KEYS[K_ATTEMPTS], id)
  redis.call('HDEL', KEYS[K_REPLAY_DLQ], id)
  redis.call('SREM', KEYS[K_LEASED], id)
end
