"""A Trigger's cursor in Redis: what to deliver next, and what an outcome changes.

Two Lua scripts do all of a Trigger's hot-path bookkeeping, one round trip each,
on keys of one source only (one hash tag, so they run on Redis Cluster too):

`fetch` takes what may start now, in this order:
  1. scheduled retries that are due (the retry ZSET, scored by due time ms);
     their score moves to now + lease, so if this dispatcher dies mid-attempt
     the retry comes due again after the lease, with its attempt count intact;
  2. entries another consumer left pending for longer than the Trigger's
     timeout plus a margin (XAUTOCLAIM), when asked to reclaim: the holder
     died, and a slow-but-alive delivery is not duplicated;
  3. new entries (XREADGROUP ... '>'), which acquire or park on their
     ordering key (ordering.py);
all bounded by the cluster-wide concurrency leases and rate tokens (limits.py).
A Trigger in Backoff gets nothing: it only probes (backoff_state.py).

`settle` applies a batch of outcomes atomically per entry:
  ok      delivered (or filtered out): XACK, drop retry bookkeeping, release the key
  retry   XACK, schedule in the retry ZSET with the attempt count (the entry
          leaves the PEL; the retry ZSET owns it, and `held` keeps retention off it)
  dead    XACK, drop bookkeeping, XADD to the DLQ stream (deadletter.py)
A due retry may be a dead letter handed back by `tidings replay`: it is
delivered from its copy in the replay HASH, which ok/dead drop (deadletter.py).
and releases leases, refunds tokens of filtered-out events, and keeps the
consecutive-failure count and last failure the Backoff state machine reads.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from tidings.api import keys
from tidings.api.routes import Route
from tidings.dispatcher import deadletter, limits, ordering
from tidings.dispatcher.limits import Limits

# Both scripts take the same KEYS, in this order.
_KEY_NAMES = (
    "K_STREAM",
    "K_RETRY",
    "K_ATTEMPTS",
    "K_INFLIGHT",
    "K_RATE",
    "K_ORDER",
    "K_PARKED",
    "K_HELD",
    "K_DLQ",
    "K_STATE",
    "K_REPLAY",
)
_PRELUDE = (
    "local "
    + ", ".join(_KEY_NAMES)
    + " = "
    + ", ".join(str(i) for i in range(1, len(_KEY_NAMES) + 1))
    + "\n"
)


def script_keys(route: Route) -> list[str]:
    ns, source, name = route.namespace, route.source, route.name
    return [
        route.stream,
        keys.retries(ns, source, name),
        keys.attempts(ns, source, name),
        keys.in_flight(ns, source, name),
        keys.rate_bucket(ns, source, name),
        keys.ordering(ns, source, name),
        keys.parked(ns, source, name),
        keys.held(ns, source, name),
        keys.dead_letters(ns, source, name),
        keys.trigger_state(ns, source, name),
        keys.replays(ns, source, name),
    ]


# Every time in these scripts is Redis's clock (TIME), so replicas with skewed
# clocks share leases, rate tokens and due times correctly.
# ARGV: group, consumer, want, (unused), lease ms, concurrency, rate, burst,
#       reclaim idle ms (0: do not reclaim), ordering path ("" : unordered),
#       probe ("1": fetch even in Backoff, for the probe)
# Returns {status, info, entries}; status ok | limited (info: ms to wait) |
# empty (info: {last stream id, ms until the next retry is due, or -1}) | backoff.
# Each entry: {origin r|c|n, stream id, fields, attempts so far, "k"..key or ""}.
_FETCH = (
    _PRELUDE
    + limits.LUA
    + ordering.LUA
    + deadletter.REPLAYED_LUA
    + """
local group, consumer = ARGV[1], ARGV[2]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local want, lease = tonumber(ARGV[3]), tonumber(ARGV[5])
local limit, rate, burst = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local reclaim_idle, path, probe = tonumber(ARGV[9]), ARGV[10], ARGV[11]

if probe ~= '1' and redis.call('HGET', KEYS[K_STATE], 'state') == 'Backoff' then
  return {'backoff', 0, {}}
end
local tokens
want, tokens = limits_take(want, now, limit, rate, burst)
if want <= 0 then
  local wait = 5
  if rate > 0 and tokens < 1 then wait = math.ceil((1 - tokens) * 1000 / rate) end
  return {'limited', wait, {}}
end

local parts = nil
if path ~= '' then parts = order_path(path) end
local out, ids = {}, {}
local function take(origin, id, fields)
  local key = ''
  if parts then
    local k = order_key(fields, parts)
    if k then key = 'k' .. k end
  end
  local attempts = '0'
  if origin == 'r' then attempts = redis.call('HGET', KEYS[K_ATTEMPTS], id) or '0' end
  out[#out + 1] = {origin, id, fields, attempts, key}
  ids[#ids + 1] = id
end

for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[K_RETRY], '-inf', now, 'LIMIT', 0, want)) do
  -- A replayed dead letter is delivered from its copy (deadletter.py).
  local fields = replayed(id)
  if not fields then
    local entry = redis.call('XRANGE', KEYS[K_STREAM], id, id)[1]
    fields = entry and entry[2]
  end
  if fields then
    redis.call('ZADD', KEYS[K_RETRY], now + lease, id)
    take('r', id, fields)
  else  -- gone from the stream (deleted by hand): nothing left to deliver
    redis.call('ZREM', KEYS[K_RETRY], id)
    redis.call('ZREM', KEYS[K_HELD], id)
    redis.call('HDEL', KEYS[K_ATTEMPTS], id)
  end
end

if reclaim_idle > 0 and #out < want then
  local claimed = redis.call('XAUTOCLAIM', KEYS[K_STREAM], group, consumer, reclaim_idle, '0-0',
    'COUNT', want - #out)
  for _, entry in ipairs(claimed[2]) do
    if entry and entry[2] then take('c', entry[1], entry[2]) end
  end
end

if #out < want then
  local read = redis.call('XREADGROUP', 'GROUP', group, consumer, 'COUNT', want - #out,
    'STREAMS', KEYS[K_STREAM], '>')
  if read then
    for _, entry in ipairs(read[1][2]) do
      local id, fields = entry[1], entry[2]
      local key = parts and order_key(fields, parts)
      if key and not order_acquire(key, id) then
        redis.call('XACK', KEYS[K_STREAM], group, id)
        order_park(key, id)
      else
        take('n', id, fields)
      end
    end
  end
end

if #out == 0 then
  local last = redis.call('XREVRANGE', KEYS[K_STREAM], '+', '-', 'COUNT', 1)[1]
  local due = redis.call('ZRANGE', KEYS[K_RETRY], 0, 0, 'WITHSCORES')[2]
  local due_in = -1
  if due then due_in = math.max(0, tonumber(due) - now) end
  return {'empty', {last and last[1] or '0-0', due_in}, {}}
end
limits_commit(now, now + lease, consumer, ids, limit, tokens, rate)
return {'ok', 0, out}
"""
)

# ARGV: group, consumer, the DLQ's max entries, burst, filtered-out count, answered count,
#       failed count, last failure time, status, message, trigger id,
#       the ids of plain acks (new entries delivered, no ordering key), space-separated
#       (the common case, packed in one argument: packing 8 per entry costs more
#       client CPU than the script);
# then per other entry: op ok|retry|dead, id, origin, key ("k"..key or ""),
#       delay ms (retry: from now on Redis's clock), attempts, status, message.
# Returns the consecutive failure count.
_SETTLE = (
    _PRELUDE
    + limits.LUA
    + ordering.LUA
    + deadletter.LUA
    + """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
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
    if origin == 'r' then redis.call('HDEL', KEYS[K_REPLAY], id) end
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
  redis.call('HSET', KEYS[K_STATE], 'failures', failures)
elseif failed > 0 then
  failures = redis.call('HINCRBY', KEYS[K_STATE], 'failures', failed)
else
  failures = tonumber(redis.call('HGET', KEYS[K_STATE], 'failures') or '0')
end
if failed > 0 then
  redis.call('HSET', KEYS[K_STATE], 'lastFailureTime', ARGV[8], 'lastFailureStatus', ARGV[9],
    'lastFailureMessage', ARGV[10])
end
return failures
"""
)


@dataclass(slots=True)
class Entry:
    """One entry to deliver. `origin`: r (a due retry), c (reclaimed from a dead
    consumer), n (new). `attempts`: attempts made before this one."""

    origin: str
    id: str
    event_json: bytes
    ingested_ms: int
    attempts: int
    order_key: str  # "" when unordered, else "k" + key (as the scripts pass it)


@dataclass(slots=True)
class Fetched:
    status: str  # ok | limited | empty | backoff
    entries: list[Entry]
    wait_ms: int = 0  # limited: when tokens are expected
    last_id: str = "0-0"  # empty: the stream's newest id, to block on
    due_in_ms: int = -1  # empty: ms until the next retry comes due (-1: none)


@dataclass(slots=True)
class Outcome:
    op: str  # ok | retry | dead
    entry: Entry
    delay_ms: int = 0  # retry: when, from now
    attempts: int = 0  # retry: the count to store; dead: the attempts made
    status: str = ""  # dead: the last HTTP status, "" for network/timeout
    message: str = ""  # dead: the reason and the last error


@dataclass(slots=True)
class FailureNote:
    time: str
    status: str
    message: str


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Cursor:
    """The fetch/settle scripts bound to one Redis client and one Trigger."""

    def __init__(self, redis: Redis, route: Route, consumer: str) -> None:
        self.redis = redis
        self.consumer = consumer
        self.fetch_script, self.settle_script = _scripts(redis)
        self.update(route)

    def update(self, route: Route) -> None:
        self.route = route
        self.keys = script_keys(route)
        self.limits = Limits.of(route.delivery)
        self.order_path = ordering.path_of(route.delivery.ordering_key)

    async def fetch(
        self, want: int, lease_ms: int, reclaim_idle_ms: int = 0, *, probe: bool = False
    ) -> Fetched:
        now = int(time.time() * 1000)
        status, info, raw = await self.fetch_script(
            keys=self.keys,
            args=[
                self.route.group,
                self.consumer,
                want,
                now,
                lease_ms,
                self.limits.concurrency,
                self.limits.rate,
                self.limits.burst,
                reclaim_idle_ms,
                self.order_path,
                "1" if probe else "0",
            ],
        )
        status = _text(status)
        if status == "ok":
            return Fetched("ok", [_entry(item) for item in raw])
        if status == "limited":
            return Fetched("limited", [], wait_ms=int(info))
        if status == "empty":
            return Fetched("empty", [], last_id=_text(info[0]), due_in_ms=int(float(info[1])))
        return Fetched(status, [])

    async def settle(
        self,
        outcomes: list[Outcome],
        *,
        refunds: int = 0,
        answered: int = 0,
        failed: int = 0,
        failure: FailureNote | None = None,
    ) -> int:
        """Apply outcomes; returns the consecutive failure count across replicas."""
        args: list[Any] = [
            self.route.group,
            self.consumer,
            self.route.delivery.dead_letter_max_events,
            self.limits.burst if self.limits.rate else 0,
            refunds,
            answered,
            failed,
            failure.time if failure else "",
            failure.status if failure else "",
            failure.message if failure else "",
            self.route.id,
            " ".join(
                o.entry.id
                for o in outcomes
                if o.op == "ok" and o.entry.origin == "n" and not o.entry.order_key
            ),
        ]
        for o in outcomes:
            if o.op == "ok" and o.entry.origin == "n" and not o.entry.order_key:
                continue
            args += [
                o.op,
                o.entry.id,
                o.entry.origin,
                o.entry.order_key,
                o.delay_ms,
                o.attempts,
                o.status,
                o.message,
            ]
        return int(await self.settle_script(keys=self.keys, args=args))


_FIELD_EVENT = (keys.FIELD_EVENT.encode(), keys.FIELD_EVENT)
_FIELD_TIME = (keys.FIELD_TIME.encode(), keys.FIELD_TIME)


def _entry(item: list[Any]) -> Entry:
    origin, stream_id, fields, attempts, key = item
    event_json = b"{}"
    ingested = 0
    for i in range(0, len(fields), 2):
        name = fields[i]
        if name in _FIELD_EVENT:
            value = fields[i + 1]
            event_json = value if isinstance(value, bytes) else str(value).encode()
        elif name in _FIELD_TIME:
            ingested = int(fields[i + 1])
    return Entry(
        origin=_text(origin),
        id=_text(stream_id),
        event_json=event_json,
        ingested_ms=ingested,
        attempts=int(attempts),
        order_key=_text(key),
    )


_cache: weakref.WeakKeyDictionary[Redis, tuple[AsyncScript, AsyncScript]] = (
    weakref.WeakKeyDictionary()
)


def _scripts(redis: Redis) -> tuple[AsyncScript, AsyncScript]:
    scripts = _cache.get(redis)
    if scripts is None:
        scripts = _cache[redis] = (redis.register_script(_FETCH), redis.register_script(_SETTLE))
    return scripts
