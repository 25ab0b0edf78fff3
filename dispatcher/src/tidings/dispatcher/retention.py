"""Retention: trim a source's stream by maxAge / maxEvents, and count what each
Trigger loses undelivered.

Retention wins over everything but a delivery in progress (DESIGN.md,
guarantee 5: the backlog is bounded by the source's retention). Per Trigger,
an entry below the trim point is *expired* — counted once, here, in the
Trigger's state HASH (`expired`), reported in its status and metrics, never
silently lost — when it is unread (its backlog, e.g. during a long Backoff),
scheduled for a retry or parked behind its ordering key (the `held` ZSET), a
delayed event due but not fetched yet, or
pending at a consumer whose lease has run out (a dead or stuck replica: the
lease is the Trigger's timeout + RECLAIM_MARGIN, the same time after which
XAUTOCLAIM would hand it to another). The trim removes its bookkeeping too
(retry, attempts, the ordering key it held passes on), so the scripts that
later meet a vanished entry only have to let go of it, never count it. Every
consumer group of the stream is covered, not only the routed Triggers: one
withdrawn from the table (not Ready) keeps its cursor, and its losses and the
ordering keys its trimmed entries held are handled the same way.

Two kinds of entry pull the trim point back: an entry leased to a consumer now
(the in-flight ZSET; at most `concurrency` per Trigger, and only until the
lease ends), and a delayed event before its first attempt while it is not due
(the `delayed-held` ZSET; docs/replay.md: a delay may outlast the retention;
ingest bounds it by `maxDelay`). Once due it waits only for a fetch, which a
paused Trigger or one in Backoff does not make: beyond the bound it expires like
a retry, so one stopped Trigger does not pin its whole source.

Lua calls per source (tidings/api/lua/retention_trim.lua), over that source's
keys only; every replica may run them, and running them twice does no harm.
Each call trims at most TRIM_STEP entries, so Redis is never blocked for long
and the counts of what each Trigger loses stay exact; `trim` calls again until
a call trims less, so a source ingesting faster than TRIM_STEP per retention
interval is still held at its maxEvents.

`trim_dead_letters` bounds the Triggers' DLQ streams by age in the same pass:
entries older than their Trigger's deadLetterRetention.maxAge (by Redis's
clock) go, counted in each Trigger's state HASH (`deadLettersTrimmed`). Their
count is bounded when they are written (deadletter.py).

Both calls say when the next one can first have work (`Trimmed.next_due_ms`): when
the oldest entry kept reaches the source's maxAge, or the oldest dead letter its
Trigger's. Until then only new entries or ended leases can give a trim
anything to do, and the dispatcher skips an idle source (engine.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tidings.api import keys, scripts
from tidings.api.routes import CompiledSource, Route
from tidings.api.text import text
from tidings.dispatcher import ordering
from tidings.dispatcher.cursor import cursor_keys, script_keys

TRIM_STEP = 10_000


@dataclass
class Trimmed:
    trimmed: int = 0  # entries (or dead letters) removed
    lost: dict[str, int] = field(default_factory=dict)  # trigger id -> expired or dropped
    next_due_ms: int = 0  # when the oldest entry left comes of age (0: nothing left)


def _sooner(a: int, b: int) -> int:
    """The earlier of two due times, 0 meaning none."""
    return min(a, b) if a and b else a or b


@dataclass(frozen=True)
class _Consumer:
    """A Trigger's cursor on the source: what the trim script needs of it."""

    id: str
    keys: list[str]
    group: str
    path: str  # its ordering path; UNKNOWN when not routed now


UNKNOWN = "?"  # retention_trim.lua: the path is not known, look the held keys up


async def _consumers(redis: Redis, source: CompiledSource, routes: list[Route]) -> list[_Consumer]:
    """The routed Triggers, and every other consumer group of the stream: a Trigger
    withdrawn from the table (not Ready) keeps its cursor, and what it loses must
    be counted, and an ordering key a trimmed entry held passed on, as for any."""
    out = [
        _Consumer(
            route.id, script_keys(route), route.group, ordering.path_of(route.delivery.ordering_key)
        )
        for route in routes
    ]
    try:
        infos = await redis.xinfo_groups(source.stream)
    except ResponseError:  # no stream yet
        return out
    routed = {route.group for route in routes}
    for info in infos:
        group = text(info["name"])
        if group in routed or group == keys.PLACEHOLDER_GROUP:
            continue
        name = group  # keys.group: a Trigger's group is its name
        out.append(
            _Consumer(
                keys.source_id(source.namespace, name),
                cursor_keys(source.stream, source.namespace, source.name, name),
                group,
                UNKNOWN,
            )
        )
    return out


async def trim(redis: Redis, source: CompiledSource, routes: list[Route]) -> Trimmed:
    """Trim `source`'s stream down to its retention, TRIM_STEP entries per call:
    entries trimmed, {trigger id: expired now}. Besides `routes`, the stream's other
    consumer groups (Triggers not routed now) are counted too."""
    total = Trimmed()
    consumers = await _consumers(redis, source, routes)
    while True:
        step = await _trim_step(redis, source, consumers)
        total.trimmed += step.trimmed
        for trigger, count in step.lost.items():
            total.lost[trigger] = total.lost.get(trigger, 0) + count
        total.next_due_ms = step.next_due_ms
        if step.trimmed < TRIM_STEP:
            return total


async def _trim_step(redis: Redis, source: CompiledSource, consumers: list[_Consumer]) -> Trimmed:
    keys_: list[str] = [source.stream, keys.event_index(source.namespace, source.name)]
    args: list[str | int | float] = [
        int(time.time() * 1000),
        int(source.retention_max_age * 1000),
        source.retention_max_events,
        TRIM_STEP,
    ]
    for consumer in consumers:
        keys_ += consumer.keys
        args += [consumer.group, consumer.path]
    result = await scripts.RETENTION_TRIM(redis, keys=keys_, args=args)
    counts = [int(v) for v in result]
    expired = {c.id: n for c, n in zip(consumers, counts[2:], strict=False) if n}
    oldest = counts[1]
    due = oldest + int(source.retention_max_age * 1000) if oldest else 0
    return Trimmed(counts[0], expired, due)


async def trim_dead_letters(
    redis: Redis, routes: list[Route], max_age: float | None = None
) -> Trimmed:
    """Drop dead letters older than each Trigger's deadLetterRetention.maxAge (or
    `max_age` seconds for all) from the DLQs of `routes` (all of one source: one
    script call): {trigger id: entries trimmed now}."""
    if not routes:
        return Trimmed()
    keys_: list[str] = []
    for route in routes:
        keys_ += [
            keys.dead_letters(route.namespace, route.source, route.name),
            keys.trigger_state(route.namespace, route.source, route.name),
        ]
    ages = [route.delivery.dead_letter_max_age if max_age is None else max_age for route in routes]
    result = await scripts.RETENTION_TRIM_DEAD_LETTERS(
        redis, keys=keys_, args=[int(age * 1000) for age in ages]
    )
    counts = [int(n) for n in result]
    dropped = {route.id: n for route, n in zip(routes, counts, strict=False) if n}
    return Trimmed(sum(dropped.values()), dropped, counts[-1])


def next_due_ms(stream: Trimmed, dead_letters: Trimmed) -> int:
    """When a source next has something to trim by age (0: nothing stored)."""
    return _sooner(stream.next_due_ms, dead_letters.next_due_ms)
