-- cursor_settle: apply a batch of delivery outcomes (tidings.dispatcher.cursor,
-- Cursor.settle).
-- KEYS: those of _cursor_keys.lua (K_STREAM .. K_LOG), in its order.
-- ARGV: [1] group, [2] consumer, [3] the DLQ's max entries, [4] burst, [5] filtered-out
--   count, [6] answered count, [7] failed count, [8] last failure time, [9] its
--   status, [10] its message, [11] trigger id, [12] backoff window ms, [13] backoff
--   minAttempts, [14] backoff failureRatio, [15] the attempt log's maxEntries, [16]
--   its maxAge in ms, [17] the batch's attempts for it as tidings.api.attempts.pack
--   writes them (a JSON array of [field, value, ...] arrays; "" for none), [18] the
--   ids of plain acks (new entries
--   delivered, no ordering key), space-separated (the common case, packed in one
--   argument: packing 8 per entry costs more client CPU than the script);
--   [19] how many entries an ordering key passes to this call may start at once
--   (0: none), [20] their lease ms, [21] concurrency, [22] rate per second;
--   then per other entry, 8 each: op ok|retry|dead, id, origin r|c|n, key ("k"..key
--   or ""), delay ms (retry: from now on Redis's clock), attempts, status, message.
-- Returns {consecutive failures, 1 if the subscriber looks down else 0, started,
-- released}: down when for a whole window either every attempt failed (at least
-- minAttempts in a row) or at least failureRatio of the window's attempts (at least
-- minAttempts) did (tidings.dispatcher.backoff_state). started: the entries whose
-- ordering key an outcome passed on, leased to this consumer as cursor_fetch.lua
-- leases a due retry (same format), so the next of a key goes out without waiting
-- for a fetch; released: how many more were passed a key and are due now.
--#include _cursor_keys.lua
--#include _limits.lua
--#include _ordering.lua
--#include _deadletter_add.lua
--#include _replayed.lua
--#include _now.lua
local group, consumer, burst = ARGV[1], ARGV[2], tonumber(ARGV[4])
local dlq_max = tonumber(ARGV[3])
local refunds, answered, failed = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local trigger = ARGV[11]
local hand_on, lease = tonumber(ARGV[19]), tonumber(ARGV[20])
local limit, rate = tonumber(ARGV[21]), tonumber(ARGV[22])
-- {key, id} of the entries an outcome passed an ordering key to.
local passed = {}
local function release(key, id)
  local key_name = string.sub(key, 2)
  local next_id = order_release(key_name, id, now)
  if next_id then passed[#passed + 1] = {key, next_id} end
end

-- Neither in the source's stream nor a replayed copy: nothing left to deliver.
local function gone(id)
  return redis.call('HEXISTS', KEYS[K_REPLAY], id) == 0
    and not redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
end

local acks = {}
for id in string.gmatch(ARGV[18], '%S+') do
  limits_release(consumer, id)
  acks[#acks + 1] = id
end
for i = 23, #ARGV, 8 do
  local op, id, origin, key = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  limits_release(consumer, id)
  if origin ~= 'r' then acks[#acks + 1] = id end
  if origin == 'r' then redis.call('SREM', KEYS[K_LEASED], id) end
  if op ~= 'ok' and origin == 'r' and replay_cancelled(id)
      and (op == 'retry' or redis.call('HEXISTS', KEYS[K_REPLAY_DLQ], id) == 1) then
    -- Its Replay was deleted during this attempt (replay_cancel.lua): not retried,
    -- and a dead letter goes back to the DLQ as it was.
    replay_withdraw(id, dlq_max)
    if key ~= '' then release(key, id) end
  elseif op ~= 'ok' and gone(id) then
    -- Retention took it while this attempt's lease had run out, and counted it
    -- expired then (retention_trim.lua): no retry, no dead letter of nothing.
    redis.call('ZREM', KEYS[K_RETRY], id)
    redis.call('ZREM', KEYS[K_HELD], id)
    redis.call('HDEL', KEYS[K_ATTEMPTS], id)
    if key ~= '' then release(key, id) end
  elseif op == 'retry' then
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
      redis.call('HDEL', KEYS[K_REPLAY_DLQ], id)
      -- Handed back by a Replay (replays.py): count its outcome there, unless the
      -- Replay was deleted meanwhile (owner "", or its run gone).
      local owner = redis.call('HGET', KEYS[K_OWNERS], id)
      if owner then
        redis.call('HDEL', KEYS[K_OWNERS], id)
        if owner ~= '' and redis.call('HEXISTS', KEYS[K_RUNS], owner .. '|' .. {{RUN_UID}}) == 1 then
          local what = {{RUN_DELIVERED}}
          if op == 'dead' then what = {{RUN_FAILED}} end
          redis.call('HINCRBY', KEYS[K_RUNS], owner .. '|' .. what, 1)
        end
      end
    end
    if key ~= '' then release(key, id) end
  end
end
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[K_STREAM], group, unpack(acks, i, math.min(i + 999, #acks)))
end
limits_release_all()
limits_refund(refunds, burst)

-- The next event of a settled key starts now, from here, within the limits and not
-- in Backoff; the rest stay due in the retry ZSET for any replica's fetch.
local started = {}
if hand_on > 0 and #passed > 0
    and redis.call('HGET', KEYS[K_STATE], {{STATE_STATE}}) ~= {{BACKOFF}} then
  local want, tokens = limits_take(math.min(hand_on, #passed), now, limit, rate, burst)
  local ids = {}
  for _, item in ipairs(passed) do
    if #ids >= want then break end
    local id = item[2]
    -- A replayed copy or a vanished entry is left to cursor_fetch.lua, which knows both.
    local entry = redis.call('HEXISTS', KEYS[K_REPLAY], id) == 0
      and redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
    if entry then
      redis.call('ZADD', KEYS[K_RETRY], now + lease, id)
      local attempts = redis.call('HGET', KEYS[K_ATTEMPTS], id) or '0'
      started[#started + 1] = {'r', id, entry[2], attempts, item[1]}
      ids[#ids + 1] = id
    end
  end
  if #ids > 0 then limits_commit(now, now + lease, consumer, ids, limit, tokens, rate) end
end

-- The attempt log rides along: one round trip per batch for both
-- (tidings.api.attempts). Both trims are approximate (whole stream nodes), as
-- XADD's own would be; the age is on Redis's clock, like the ids it is compared with.
if ARGV[17] ~= '' then
  local log = KEYS[K_LOG]
  for _, fields in ipairs(cjson.decode(ARGV[17])) do
    redis.call('XADD', log, '*', unpack(fields))
  end
  redis.call('XTRIM', log, 'MAXLEN', '~', ARGV[15])
  redis.call('XTRIM', log, 'MINID', '~', string.format('%d-0', math.max(0, now - tonumber(ARGV[16]))))
end

local state = KEYS[K_STATE]
local window, min_attempts, ratio = tonumber(ARGV[12]), tonumber(ARGV[13]), tonumber(ARGV[14])
local failures
if answered > 0 then
  -- The batch's answers came before or between its failures: count those after.
  failures = failed
  redis.call('HSET', state, {{STATE_FAILURES}}, failures)
  if failed > 0 then
    redis.call('HSET', state, {{STATE_FAILING_SINCE}}, now)
  else
    redis.call('HDEL', state, {{STATE_FAILING_SINCE}})
  end
elseif failed > 0 then
  failures = redis.call('HINCRBY', state, {{STATE_FAILURES}}, failed)
  redis.call('HSETNX', state, {{STATE_FAILING_SINCE}}, now)
else
  failures = tonumber(redis.call('HGET', state, {{STATE_FAILURES}}) or '0')
end
if failed > 0 then
  redis.call('HSET', state, {{STATE_LAST_FAILURE_TIME}}, ARGV[8],
    {{STATE_LAST_FAILURE_STATUS}}, ARGV[9], {{STATE_LAST_FAILURE_MESSAGE}}, ARGV[10])
end

local down = 0
local since = tonumber(redis.call('HGET', state, {{STATE_FAILING_SINCE}}) or '')
if failures >= min_attempts and since and now - since >= window then down = 1 end
-- The ratio over a sliding window: this bucket, plus the previous one weighted by
-- how much of it the window still covers.
if window > 0 and answered + failed > 0 then
  local w = redis.call('HMGET', state, {{STATE_WINDOW_START}}, {{STATE_WINDOW_ATTEMPTS}},
    {{STATE_WINDOW_FAILURES}}, {{STATE_PREVIOUS_ATTEMPTS}}, {{STATE_PREVIOUS_FAILURES}},
    {{STATE_RATIO_SINCE}})
  local start = tonumber(w[1] or '0')
  local n, f = tonumber(w[2] or '0'), tonumber(w[3] or '0')
  local prev_n, prev_f = tonumber(w[4] or '0'), tonumber(w[5] or '0')
  if start == 0 or now < start then
    start, n, f, prev_n, prev_f = now, 0, 0, 0, 0
  elseif now >= start + window then
    if now < start + 2 * window then prev_n, prev_f = n, f else prev_n, prev_f = 0, 0 end
    n, f = 0, 0
    start = now - (now - start) % window
  end
  n, f = n + answered + failed, f + failed
  local weight = 1 - (now - start) / window
  local total, failing = n + prev_n * weight, f + prev_f * weight
  redis.call('HSET', state, {{STATE_WINDOW_START}}, start, {{STATE_WINDOW_ATTEMPTS}}, n,
    {{STATE_WINDOW_FAILURES}}, f, {{STATE_PREVIOUS_ATTEMPTS}}, prev_n,
    {{STATE_PREVIOUS_FAILURES}}, prev_f)
  if total >= min_attempts and failing >= ratio * total then
    local over = tonumber(w[6] or '')
    if not over then
      over = now
      redis.call('HSET', state, {{STATE_RATIO_SINCE}}, now)
    end
    if now - over >= window then down = 1 end
  else
    redis.call('HDEL', state, {{STATE_RATIO_SINCE}})
  end
end
return {failures, down, started, #passed - #started}
