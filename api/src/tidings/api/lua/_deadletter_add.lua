-- Fragment: dead letters into the DLQ stream (tidings.dispatcher.deadletter).
-- KEYS: K_REPLAY, K_STREAM, K_DLQ, K_STATE (_cursor_keys.lua; the last two for
-- deadletter_append). ARGV: none.
--   deadletter_append(fields, max_events): an entry of these DLQ_* fields ({field,
--     value, ...}) into the DLQ stream, capped at max_events (what the cap drops is
--     counted);
--   deadletter_add(id, attempts, status, message, now, trigger, max_events): the
--     event of stream id `id` (its replayed copy if it has one) appended, and
--     counted as dead-lettered.
--#include _entry_event.lua
local function deadletter_append(fields, max_events)
  local before = redis.call('XLEN', KEYS[K_DLQ])
  redis.call('XADD', KEYS[K_DLQ], 'MAXLEN', max_events, '*', unpack(fields))
  local dropped = before + 1 - redis.call('XLEN', KEYS[K_DLQ])
  if dropped > 0 then redis.call('HINCRBY', KEYS[K_STATE], {{STATE_DEAD_LETTERS_TRIMMED}}, dropped) end
end

local function deadletter_add(id, attempts, status, message, now, trigger, max_events)
  local event = ''
  local copy = redis.call('HGET', KEYS[K_REPLAY], id)
  if copy then  -- a replayed event: its copy, the source's entry may be gone
    event = string.sub(copy, string.find(copy, ' ', 1, true) + 1)
  else
    local entry = redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
    if entry then event = entry_event(entry[2]) or '' end
  end
  deadletter_append({ {{DLQ_EVENT}}, event, {{DLQ_STREAM_ID}}, id, {{DLQ_ATTEMPTS}}, attempts,
    {{DLQ_STATUS}}, status, {{DLQ_ERROR}}, message, {{DLQ_TIME}}, now, {{DLQ_TRIGGER}}, trigger },
    max_events)
  redis.call('HINCRBY', KEYS[K_STATE], {{STATE_DEAD_LETTERED}}, 1)
end
