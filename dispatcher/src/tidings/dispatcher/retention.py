"""Retention: trim a source's stream by maxAge / maxEvents, never an entry a
Trigger still holds, and count what falls out undelivered.

An entry is *held* by a Trigger while it is being delivered (in the group's
PEL), scheduled for a retry or parked behind its ordering key (the `held`
ZSET). The trim point is the later of "older than maxAge" and "beyond
maxEvents", pulled back to the oldest held entry of any Trigger of the
source. Entries a Trigger has not even read yet (its backlog, e.g. during a
long Backoff) may fall out: those are counted in the Trigger's state HASH
(`expired`), reported in its status and metrics, never silently lost.

One Lua call per source, over that source's keys only; every replica may run
it, and running it twice does no harm. Work per call is bounded (TRIM_STEP
entries), so a huge backlog is trimmed over several runs.

`trim_dead_letters` bounds the Triggers' DLQ streams by age in the same pass:
entries older than their Trigger's deadLetterRetention.maxAge (by Redis's
clock) go, counted in each Trigger's state HASH (`deadLettersTrimmed`). Their
count is bounded when they are written (deadletter.py).
"""

from __future__ import annotations

import time
import weakref

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from tidings.api import keys
from tidings.api.routes import CompiledSource, Route

TRIM_STEP = 10_000

# KEYS: stream, then per Trigger: held ZSET, state HASH.
# ARGV: now ms, maxAge ms, maxEvents, step, then the Triggers' group names.
# Returns {entries trimmed, then per Trigger: expired now}.
_TRIM = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function less(a, b)
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end
local function after(id)  -- the smallest id greater than `id`
  local ms, seq = parse(id)
  return string.format('%d-%d', ms, seq + 1)
end

local now, max_age, max_events, step = tonumber(ARGV[1]), tonumber(ARGV[2]),
  tonumber(ARGV[3]), tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return {0} end

local groups = {}
local ok, infos = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if ok then
  for _, g in ipairs(infos) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    groups[info['name']] = info['last-delivered-id']
  end
end

-- The trim point: entries with a smaller id go.
local cut = string.format('%d-0', math.max(0, now - max_age))
local length = redis.call('XLEN', KEYS[1])
if length > max_events then
  local over = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', math.min(length - max_events, step))
  if #over > 0 then
    local by_count = after(over[#over][1])
    if less(cut, by_count) then cut = by_count end
  end
end
-- Never past an entry a Trigger holds.
for i = 5, #ARGV do
  local group = ARGV[i]
  if groups[group] then
    local pending = redis.call('XPENDING', KEYS[1], group)
    if pending[1] > 0 and less(pending[2], cut) then cut = pending[2] end
  end
  local held = redis.call('ZRANGE', KEYS[2 * (i - 4)], 0, 0, 'WITHSCORES')
  if held[2] then
    local floor = string.format('%d-0', tonumber(held[2]))
    if less(floor, cut) then cut = floor end
  end
end

local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
if not first or not less(first[1], cut) then return {0} end

-- What each Trigger had not read yet and is about to lose.
local out = {0}
for i = 5, #ARGV do
  local group, lost = ARGV[i], 0
  local last = groups[group]
  if last and less(last, cut) then
    local start = after(last)
    if less(start, first[1]) then start = first[1] end
    lost = #redis.call('XRANGE', KEYS[1], start, '(' .. cut, 'COUNT', step)
    if lost > 0 then redis.call('HINCRBY', KEYS[2 * (i - 4) + 1], 'expired', lost) end
  end
  out[#out + 1] = lost
end
out[1] = redis.call('XTRIM', KEYS[1], 'MINID', cut)
return out
"""


async def trim(
    redis: Redis, source: CompiledSource, routes: list[Route]
) -> tuple[int, dict[str, int]]:
    """Trim `source`'s stream once; returns (entries trimmed, {trigger id: expired now})."""
    keys_: list[str] = [source.stream]
    for route in routes:
        keys_ += [
            keys.held(route.namespace, route.source, route.name),
            keys.trigger_state(route.namespace, route.source, route.name),
        ]
    args: list[str | int | float] = [
        int(time.time() * 1000),
        int(source.retention_max_age * 1000),
        source.retention_max_events,
        TRIM_STEP,
        *(route.group for route in routes),
    ]
    result = await _script(redis)(keys=keys_, args=args)
    counts = [int(v) for v in result]
    expired = {route.id: n for route, n in zip(routes, counts[1:], strict=False) if n}
    return counts[0], expired


# KEYS: per Trigger: DLQ stream, state HASH. ARGV: max age ms.
# Returns the entries trimmed per Trigger.
_TRIM_DEAD_LETTERS = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local out = {}
for i = 1, #KEYS, 2 do
  local cut = string.format('%d-0', math.max(0, now - tonumber(ARGV[(i + 1) / 2])))
  local trimmed = redis.call('XTRIM', KEYS[i], 'MINID', cut)
  if trimmed > 0 then redis.call('HINCRBY', KEYS[i + 1], STATE_TRIMMED, trimmed) end
  out[#out + 1] = trimmed
end
return out
""".replace("STATE_TRIMMED", repr(keys.STATE_DEAD_LETTERS_TRIMMED))


async def trim_dead_letters(
    redis: Redis, routes: list[Route], max_age: float | None = None
) -> dict[str, int]:
    """Drop dead letters older than each Trigger's deadLetterRetention.maxAge (or
    `max_age` seconds for all) from the DLQs of `routes` (all of one source: one
    script call); returns {trigger id: entries trimmed now}."""
    if not routes:
        return {}
    keys_: list[str] = []
    for route in routes:
        keys_ += [
            keys.dead_letters(route.namespace, route.source, route.name),
            keys.trigger_state(route.namespace, route.source, route.name),
        ]
    ages = [route.delivery.dead_letter_max_age if max_age is None else max_age for route in routes]
    result = await _script(redis, _TRIM_DEAD_LETTERS)(
        keys=keys_, args=[int(age * 1000) for age in ages]
    )
    return {route.id: int(n) for route, n in zip(routes, result, strict=True) if int(n)}


_cache: weakref.WeakKeyDictionary[Redis, dict[str, AsyncScript]] = weakref.WeakKeyDictionary()


def _script(redis: Redis, source: str = _TRIM) -> AsyncScript:
    scripts = _cache.setdefault(redis, {})
    script = scripts.get(source)
    if script is None:
        script = scripts[source] = redis.register_script(source)
    return script
