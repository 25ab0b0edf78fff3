-- cursor_settle: apply a batch of delivery outcomes (tidings.dispatcher.cursor,
-- Cursor.settle).
-- KEYS: those of _cursor_keys.lua (K_STREAM .. K_RUNS), in its order.
-- ARGV: [1] group, [2] consumer, [3] the DLQ's max entries, [4] burst, [5] filtered-out
--   count, [6] answered count, [7] failed count, [8] last failure time, [9] its
--   status, [10] its message, [11] trigger id, [12] the ids of plain acks (new entries
--   delivered, no ordering key), space-separated (the common case, packed in one
--   argument: packing 8 per entry costs more client CPU than the script);
--   then per other entry, 8 each: op ok|retry|dead, id, origin r|c|n, key ("k"..key
--   or ""), delay ms (retry: from now on Redis's clock), attempts, status, message.
-- Returns the consecutive failure count.
--#include _cursor_keys.lua
--#include _limits.lua
--#include _ordering.lua
--#include _deadletter_add.lua
--#include _now.lua
local group, consumer, burst = ARGV[1], ARGV[2], tonumber(ARGV[4])
local dlq_max = tonumber(ARGV[3])
local refunds, answered, failed = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local trigger = ARGV[11]

local acks = {}
for id in string.gmatch(ARGV[12], '%S+') do
  limits_release(consumer, id)
  acks[#acks + 1] = id
end
for i = 13, #ARGV, 8 do
  local op, id, origin, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  limits_release(consumer, id)
  if origin ~= 'r' then acks[#acks + 1] = id end
  if op == 'retry' then
    redis.call('ZADD', KEYS[K_RETRY], now + tonumber(ARGV[i + 4]), id)
    -- A replayed event has its own copy: retention need not keep the source's entry.
    if redis.call('HEXISTS', KEYS[K_REPLAY], id) == 0 then
      redis.call('ZADD', KEYS[K_HELD], id_ms(id), id)
    end
    redis.call('HSET', KEYS[K_ATTEMPTS], id, ARGV[i + 5])
  else
    if origin ~= 'n' then
      redis.call('ZREM', KEYS[K_RETRY], id)
      redis.call('ZREM', KEYS[K_HELD], id)
      redis.call('HDEL', KEYS[K_ATTEMPTS], id)
    end
    if op == 'dead' then
      deadletter_add(id, ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], now, trigger, dlq_max)
    end
    if origin == 'r' then
      redis.call('HDEL', KEYS[K_REPLAY], id)
      -- Handed back by a Replay (replays.py): count its outcome there.
      local owner = redis.call('HGET', KEYS[K_OWNERS], id)
      if owner then
        redis.call('HDEL', KEYS[K_OWNERS], id)
        if redis.call('HEXISTS', KEYS[K_RUNS], owner .. '|' .. {{RUN_UID}}) == 1 then
          local what = {{RUN_DELIVERED}}
          if op == 'dead' then what = {{RUN_FAILED}} end
          redis.call('HINCRBY', KEYS[K_RUNS], owner .. '|' .. what, 1)
        end
      end
    end
    if key ~= '' then order_release(string.sub(key, 2), id, now) end
  end
end
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[K_STREAM], group, unpack(acks, i, math.min(i + 999, #acks)))
end
limits_release_all()
limits_refund(refunds, burst)

local failures
if answered > 0 then
  failures = failed
  redis.call('HSET', KEYS[K_STATE], {{STATE_FAILURES}}, failures)
elseif failed > 0 then
  failures = redis.call('HINCRBY', KEYS[K_STATE], {{STATE_FAILURES}}, failed)
else
  failures = tonumber(redis.call('HGET', KEYS[K_STATE], {{STATE_FAILURES}}) or '0')
end
if failed > 0 then
  redis.call('HSET', KEYS[K_STATE], {{STATE_LAST_FAILURE_TIME}}, ARGV[8],
    {{STATE_LAST_FAILURE_STATUS}}, ARGV[9], {{STATE_LAST_FAILURE_MESSAGE}}, ARGV[10])
end
return failures
