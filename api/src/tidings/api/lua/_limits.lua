-- Fragment: a Trigger's concurrency and rate limits (tidings.dispatcher.limits).
-- KEYS: K_INFLIGHT, K_RATE (_cursor_keys.lua). ARGV: none; the functions take
-- their arguments:
--   limits_take(want, now, limit, rate, burst): how many entries may start now,
--     and the bucket's tokens after refill (nil without a rate limit);
--   limits_commit(now, lease_until, consumer, ids, limit, tokens, rate): record
--     leases and spend tokens;
--   limits_release(consumer, id), limits_release_all(): end leases, in one call;
--   limits_refund(count, burst): give tokens back (events a filter dropped).
local function limits_take(want, now, limit, rate, burst)
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[K_INFLIGHT], '-inf', now)
    local free = limit - redis.call('ZCARD', KEYS[K_INFLIGHT])
    if free < want then want = free end
  end
  local tokens = nil
  if rate > 0 then
    local bucket = redis.call('HMGET', KEYS[K_RATE], {{RATE_TOKENS}}, {{RATE_UPDATED}})
    tokens = tonumber(bucket[1]) or burst
    local ts = tonumber(bucket[2]) or now
    if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end
    local whole = math.floor(tokens)
    if whole < want then want = whole end
  end
  if want < 0 then want = 0 end
  return want, tokens
end

local function limits_commit(now, lease_until, consumer, ids, limit, tokens, rate)
  if limit > 0 and #ids > 0 then
    local args = {}
    for _, id in ipairs(ids) do
      args[#args + 1] = lease_until
      args[#args + 1] = consumer .. ':' .. id
    end
    redis.call('ZADD', KEYS[K_INFLIGHT], unpack(args))
  end
  if rate > 0 then
    redis.call('HSET', KEYS[K_RATE], {{RATE_TOKENS}}, tostring(tokens - #ids), {{RATE_UPDATED}}, now)
  end
end

-- Collects lease members; limits_release_all removes them in one call.
local released = {}
local function limits_release(consumer, id)
  released[#released + 1] = consumer .. ':' .. id
end

local function limits_release_all()
  for i = 1, #released, 1000 do
    redis.call('ZREM', KEYS[K_INFLIGHT], unpack(released, i, math.min(i + 999, #released)))
  end
end

local function limits_refund(count, burst)
  if count > 0 and burst > 0 then
    local tokens = tonumber(redis.call('HGET', KEYS[K_RATE], {{RATE_TOKENS}}))
    if tokens then
      redis.call('HSET', KEYS[K_RATE], {{RATE_TOKENS}}, tostring(math.min(burst, tokens + count)))
    end
  end
end
