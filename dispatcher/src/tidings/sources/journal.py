"""The exactly-once write of a source adapter: events and the resume point in
one atomic step.

Ingest's `streams.append` dedupes by event id within a time window. Adapters
need more: after a crash they replay from their own resume point (a WAL
position, a resourceVersion, the last tick), and a replay must neither lose
nor repeat an event however long the outage was. So each adapter write is one
Lua call (tidings/api/lua/journal_write.lua) that

- appends the events to the source's stream, in order,
- skips every event whose *position* is not above the stored guard (the
  position of the last event ever written: an LSN for Postgres, the tick time
  for schedules), and moves the guard to the last one written,
- and sets the adapter's resume fields in keys.adapter_state (and, for the
  Kubernetes adapter, its per-object resourceVersions),

all or nothing. With tracing on, each event starts a new trace here (a PRODUCER
span; its context is stored with the event, tidings.api.tracing). An adapter
killed at any moment either wrote the events and the resume point, or neither.
Positions are fixed-width decimal strings, so Lua compares them as strings
without losing 64-bit precision.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis

from tidings.api import keys, scripts, tracing
from tidings.api.events import CloudEvent, encode
from tidings.api.routes import CompiledSource
from tidings.api.text import text

# The field of keys.adapter_state that holds the guard position.
GUARD = keys.ADAPTER_GUARD


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
    tracer = tracing.tracer()
    spans = (
        tracer.capture([event for _, event in batch.events], source.id, source.kind)
        if tracer is not None and batch.events
        else None
    )
    argv: list[str] = [
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
        argv += (event_position, event.id, encode(event, 0)[keys.FIELD_EVENT])
    if (batch.objects_set or batch.objects_deleted) and objects_key is None:
        raise ValueError("objects_key is required to change objects")
    state_key = keys.adapter_state(source.namespace, source.name)
    reply = await scripts.JOURNAL_WRITE(
        redis,
        keys=[
            source.stream,
            state_key,
            objects_key or state_key,
            keys.event_index(source.namespace, source.name),
        ],
        args=argv,
    )
    appended, skipped, first_id, last_id = reply
    written = Written(int(appended), int(skipped), text(first_id), text(last_id))
    if spans is not None:
        assert tracer is not None
        tracer.end_captured(spans, written.skipped, written.first_id, written.last_id)
    return written


async def read_state(redis: Redis, source: CompiledSource) -> dict[str, str]:
    raw = await redis.hgetall(keys.adapter_state(source.namespace, source.name))  # type: ignore[misc]
    return {text(k): text(v) for k, v in raw.items()}


async def set_state(redis: Redis, source: CompiledSource, values: Mapping[str, str]) -> None:
    """Set resume fields without events (e.g. a Kubernetes bookmark)."""
    if values:
        key = keys.adapter_state(source.namespace, source.name)
        await redis.hset(key, mapping=dict(values.items()))  # type: ignore[misc,arg-type]


def chunks(
    items: Sequence[tuple[str, CloudEvent]], size: int
) -> list[list[tuple[str, CloudEvent]]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
