"""A Trigger's delivery state (DESIGN.md guarantee 5) and what it publishes.

    Delivering --(N consecutive failed attempts, all replicas)--> Backoff
    Backoff    --(a probe is answered)--> Delivering, every scheduled retry due now

In Backoff no replica pulls new events or works through retries (cursor.py's
fetch returns nothing). One replica at a time probes the subscriber with the
Trigger's head event (its earliest scheduled retry, else the next unread
event), at intervals that double from the retry policy's initialDelay up to
its maxDelay, capped at PROBE_MAX. A failed probe does not count as an
attempt: an outage of days dead-letters nothing until an event's maxAge. The
first answered probe ends Backoff and the backlog drains at full speed.

The state lives in the Trigger's state HASH (keys.trigger_state, fields
keys.STATE_*), which is also what the operator reads for `status.delivery`:
state, lag, deadLettered, expired, lastFailure. `publish` refreshes lag and
counts there every second or so.
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

# Consecutive failed attempts (across replicas) that put a Trigger in Backoff.
FAILURES_TO_BACKOFF = 5
# Longest interval between probes, whatever the Trigger's maxDelay.
PROBE_MAX = 300.0

# Times are Redis's clock (TIME); ARGV[1] ("now") is unused by these scripts.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: state. ARGV: -, first interval ms, threshold. 1 when it entered Backoff.
_ENTER = (
    _NOW
    + """
local s = redis.call('HMGET', KEYS[1], 'state', 'failures')
if s[1] == 'Backoff' or tonumber(s[2] or '0') < tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], 'state', 'Backoff', 'probeInterval', ARGV[2],
  'probeDue', now + tonumber(ARGV[2]))
return 1
"""
)

# KEYS: state. ARGV: -, lease ms.
# -1: not in Backoff; 0: this caller probes now; else ms until the next probe is due.
_CLAIM = (
    _NOW
    + """
local s = redis.call('HMGET', KEYS[1], 'state', 'probeDue')
if s[1] ~= 'Backoff' then return -1 end
local due = tonumber(s[2] or '0')
if due > now then return due - now end
redis.call('HSET', KEYS[1], 'probeDue', now + tonumber(ARGV[2]))
return 0
"""
)

# KEYS: state. ARGV: -, first interval ms, cap ms.
_PROBE_FAILED = (
    _NOW
    + """
local interval = tonumber(redis.call('HGET', KEYS[1], 'probeInterval') or ARGV[2])
interval = math.min(math.max(interval * 2, tonumber(ARGV[2])), tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'probeInterval', interval, 'probeDue', now + interval)
return interval
"""
)

# KEYS: state, retry ZSET. Returns how many retries were made due.
_RECOVER = (
    _NOW
    + """
if redis.call('HGET', KEYS[1], 'state') ~= 'Backoff' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'Delivering', 'failures', 0)
redis.call('HDEL', KEYS[1], 'probeDue', 'probeInterval')
local ids = redis.call('ZRANGE', KEYS[2], 0, -1)
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[2], now, id) end
return #ids
"""
)

# KEYS: stream, state, retry, parked, dlq. ARGV: group, paused "1"/"0", now ms.
# Returns {state, lag, pending, retries, parked, dlq length, deadLettered, expired}.
_PUBLISH = """
local lag, pending = 0, 0
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == ARGV[1] then
      pending = info['pending'] or 0
      if info['lag'] then
        lag = info['lag']
      else  -- unknown after deletions: count, bounded
        lag = #redis.call('XRANGE', KEYS[1], '(' .. info['last-delivered-id'], '+', 'COUNT', 10000)
      end
    end
  end
end
local retries = redis.call('ZCARD', KEYS[3])
local parked = redis.call('ZCARD', KEYS[4])
local state = redis.call('HGET', KEYS[2], 'state')
if ARGV[2] == '1' then
  state = 'Paused'
elseif state ~= 'Backoff' then
  state = 'Delivering'
end
local total = lag + retries + parked
redis.call('HSET', KEYS[2], 'state', state, 'lag', total, 'pending', pending,
  'retries', retries, 'updated', ARGV[3])
local counts = redis.call('HMGET', KEYS[2], 'deadLettered', 'expired')
return {state, total, pending, retries, parked, redis.call('XLEN', KEYS[5]),
  tonumber(counts[1] or '0'), tonumber(counts[2] or '0')}
"""


@dataclass(frozen=True)
class Published:
    state: str
    lag: int
    pending: int
    retries: int
    parked: int
    dlq_size: int
    dead_lettered: int
    expired: int


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class BackoffState:
    """The state machine's Redis side for one Trigger."""

    def __init__(self, redis: Redis, route: Route) -> None:
        self.redis = redis
        self.scripts = _scripts(redis)
        self.update(route)

    def update(self, route: Route) -> None:
        self.route = route
        ns, source, name = route.namespace, route.source, route.name
        self.state_key = keys.trigger_state(ns, source, name)
        self.retry_key = keys.retries(ns, source, name)
        self.parked_key = keys.parked(ns, source, name)
        self.dlq_key = keys.dead_letters(ns, source, name)
        retry = route.delivery.retry
        self.first_interval = max(0.1, retry.initial_delay)
        self.max_interval = max(self.first_interval, min(retry.max_delay, PROBE_MAX))

    async def enter_if_failing(self, threshold: int = FAILURES_TO_BACKOFF) -> bool:
        now = int(time.time() * 1000)
        entered = await self.scripts["enter"](
            keys=[self.state_key], args=[now, _ms(self.first_interval), threshold]
        )
        return bool(int(entered))

    async def claim_probe(self, lease_seconds: float) -> int:
        """-1 not in Backoff; 0 probe now; else ms until the next probe is due."""
        now = int(time.time() * 1000)
        return int(
            await self.scripts["claim"](keys=[self.state_key], args=[now, _ms(lease_seconds)])
        )

    async def probe_failed(self) -> float:
        now = int(time.time() * 1000)
        interval = await self.scripts["failed"](
            keys=[self.state_key],
            args=[now, _ms(self.first_interval), _ms(self.max_interval)],
        )
        return float(interval) / 1000

    async def recover(self) -> int:
        now = int(time.time() * 1000)
        return int(await self.scripts["recover"](keys=[self.state_key, self.retry_key], args=[now]))

    async def publish(self) -> Published:
        raw: list[Any] = await self.scripts["publish"](
            keys=[
                self.route.stream,
                self.state_key,
                self.retry_key,
                self.parked_key,
                self.dlq_key,
            ],
            args=[self.route.group, "1" if self.route.paused else "0", int(time.time() * 1000)],
        )
        state = raw[0].decode() if isinstance(raw[0], bytes) else str(raw[0])
        return Published(state, *(int(v) for v in raw[1:]))


_cache: weakref.WeakKeyDictionary[Redis, dict[str, AsyncScript]] = weakref.WeakKeyDictionary()


def _scripts(redis: Redis) -> dict[str, AsyncScript]:
    scripts = _cache.get(redis)
    if scripts is None:
        scripts = _cache[redis] = {
            name: redis.register_script(source)
            for name, source in (
                ("enter", _ENTER),
                ("claim", _CLAIM),
                ("failed", _PROBE_FAILED),
                ("recover", _RECOVER),
                ("publish", _PUBLISH),
            )
        }
    return scripts
