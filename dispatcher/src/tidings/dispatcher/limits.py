"""A Trigger's concurrency limit and rate limit, held across all dispatcher replicas.

Both live in Redis under the source's hash tag and are taken inside the same
Lua call that reads the entries (tidings.dispatcher.cursor), so a replica only
ever reads what it may start at once, and the limits cost no extra round trip.

- Concurrency: a ZSET of leases (member "consumer:stream-id" -> expiry ms).
  A lease ends when its outcome is settled, or expires after the Trigger's
  timeout plus a margin when its holder died, so a crash cannot leak capacity.
- Rate: a token bucket (HASH tokens, ts) refilled at `perSecond` up to
  `burst`. Events a filter then drops get their tokens back.

The functions below are Lua source spliced into those scripts; they use the
script's KEYS as named by the KEY_* constants of cursor.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.api.routes import CompiledDelivery

# take(want, now, limit, rate, burst): how many entries may start now, and the
# bucket's tokens after refill (nil without a rate limit).
# commit(taken, now, lease_until, consumer, ids, tokens, rate): record leases and spend tokens.
LUA = """
local function limits_take(want, now, limit, rate, burst)
  if limit > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[K_INFLIGHT], '-inf', now)
    local free = limit - redis.call('ZCARD', KEYS[K_INFLIGHT])
    if free < want then want = free end
  end
  local tokens = nil
  if rate > 0 then
    local bucket = redis.call('HMGET', KEYS[K_RATE], 'tokens', 'ts')
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
    redis.call('HSET', KEYS[K_RATE], 'tokens', tostring(tokens - #ids), 'ts', now)
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
    local tokens = tonumber(redis.call('HGET', KEYS[K_RATE], 'tokens'))
    if tokens then
      redis.call('HSET', KEYS[K_RATE], 'tokens', tostring(math.min(burst, tokens + count)))
    end
  end
end
"""


@dataclass(frozen=True)
class Limits:
    """A Trigger's limits as script arguments (0 means none)."""

    concurrency: int
    rate: float
    burst: int

    @classmethod
    def of(cls, delivery: CompiledDelivery) -> Limits:
        rate = delivery.rate_per_second or 0.0
        burst = delivery.rate_burst or (max(1, int(rate)) if rate else 0)
        return cls(concurrency=delivery.concurrency, rate=rate, burst=burst)
