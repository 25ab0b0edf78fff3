"""The exactly-once write of a source adapter: events and the resume point in
one atomic step.

Ingest's `streams.append` dedupes by event id within a time window. Adapters
need more: after a crash they replay from their own resume point (a WAL
position, a resourceVersion, the last tick), and a replay must neither lose
nor repeat an event however long the outage was. So each adapter write is one
Lua call that

- appends the events to the source's stream, in order,
- skips every event whose *position* is not above the stored guard (the
  position of the last event ever written: an LSN for Postgres, the tick time
  for schedules), and moves the guard to the last one written,
- and sets the adapter's resume fields in keys.adapter_state (and, for the
  Kubernetes adapter, its per-object resourceVersions),

all or nothing. An adapter killed at any moment either wrote the events and
the resume point, or neither. Positions are fixed-width decimal strings, so
Lua compares them as strings without losing 64-bit precision.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from tidings.api import keys
from tidings.api.events import CloudEvent, encode
from tidings.api.routes import CompiledSource

# The field of keys.adapter_state that holds the guard position.
GUARD = "position"

# KEYS: stream, adapter state, objects (may be unused).
# ARGV[1..4]: event field, time field, guard field ("" = no guard), now (ms).
# ARGV[5..8]: counts of state pairs, object sets, object deletions, events;
# then state pairs, object pairs, object uids, and (position, event JSON) pairs.
_WRITE = """
local guard_field = ARGV[3]
local guard = ''
if guard_field ~= '' then
  guard = redis.call('HGET', KEYS[2], guard_field) or ''
end
local n_state, n_set, n_del, n_events =
  tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local i = 9
for _ = 1, n_state do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_set do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, n_del do
  redis.call('HDEL', KEYS[3], ARGV[i])
  i = i + 1
end
local appended, skipped, last = 0, 0, guard
local first_id, last_id = '', ''
for _ = 1, n_events do
  local position = ARGV[i]
  if guard_field ~= '' and position <= last then
    skipped = skipped + 1
  else
    last_id = redis.call('XADD', KEYS[1], '*', ARGV[1], ARGV[i + 1], ARGV[2], ARGV[4])
    if first_id == '' then first_id = last_id end
    appended = appended + 1
    if guard_field ~= '' then last = position end
  end
  i = i + 2
end
if guard_field ~= '' and last ~= guard then
  redis.call('HSET', KEYS[2], guard_field, last)
end
return {appended, skipped, first_id, last_id}
"""


@dataclass
class Batch:
    """One atomic write. `events` are (position, event); positions must rise."""

    events: list[tuple[str, CloudEvent]] = field(default_factory=list)
    state: dict[str, str] = field(default_factory=dict)
    objects_set: dict[str, str] = field(default_factory=dict)
    objects_deleted: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Written:
    appended: int
    skipped: int  # at or below the guard: written before
    first_id: str
    last_id: str


def position(*parts: int) -> str:
    """A guard position from non-negative integers (e.g. LSN, sequence):
    fixed width, so string order is numeric order."""
    return "".join(f"{part:020d}" for part in parts)


async def write(
    redis: Redis,
    source: CompiledSource,
    batch: Batch,
    *,
    guarded: bool = True,
    objects_key: str | None = None,
) -> Written:
    """Write `batch` atomically; with `guarded`, events at or below the stored
    guard position are skipped (they were written before a crash or by a
    twin replica)."""
    argv: list[str] = [
        keys.FIELD_EVENT,
        keys.FIELD_TIME,
        GUARD if guarded else "",
        str(int(time.time() * 1000)),
        str(len(batch.state)),
        str(len(batch.objects_set)),
        str(len(batch.objects_deleted)),
        str(len(batch.events)),
    ]
    for name, value in batch.state.items():
        argv += (name, value)
    for uid, value in batch.objects_set.items():
        argv += (uid, value)
    argv += batch.objects_deleted
    for event_position, event in batch.events:
        argv += (event_position, encode(event, 0)[keys.FIELD_EVENT])
    if (batch.objects_set or batch.objects_deleted) and objects_key is None:
        raise ValueError("objects_key is required to change objects")
    state_key = keys.adapter_state(source.namespace, source.name)
    reply = await _script(redis)(
        keys=[source.stream, state_key, objects_key or state_key], args=argv
    )
    appended, skipped, first_id, last_id = reply
    return Written(int(appended), int(skipped), _text(first_id), _text(last_id))


async def read_state(redis: Redis, source: CompiledSource) -> dict[str, str]:
    raw = await redis.hgetall(keys.adapter_state(source.namespace, source.name))  # type: ignore[misc]
    return {_text(k): _text(v) for k, v in raw.items()}


async def set_state(redis: Redis, source: CompiledSource, values: Mapping[str, str]) -> None:
    """Set resume fields without events (e.g. a Kubernetes bookmark)."""
    if values:
        key = keys.adapter_state(source.namespace, source.name)
        await redis.hset(key, mapping=dict(values.items()))  # type: ignore[misc,arg-type]


def chunks(
    items: Sequence[tuple[str, CloudEvent]], size: int
) -> list[list[tuple[str, CloudEvent]]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


_scripts: weakref.WeakKeyDictionary[Redis, AsyncScript] = weakref.WeakKeyDictionary()


def _script(redis: Redis) -> AsyncScript:
    script = _scripts.get(redis)
    if script is None:
        script = _scripts[redis] = redis.register_script(_WRITE)
    return script


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
