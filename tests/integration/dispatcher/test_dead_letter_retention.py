"""A Trigger's DLQ is bounded by spec.delivery.deadLetterRetention: at most
maxEvents entries (trimmed as dead letters are written; default 100,000) and
nothing older than maxAge (trimmed by the dispatcher's retention pass; default
30 days); both are counted in the Trigger's state."""

from __future__ import annotations

import json

from aiohttp import web
from dispatch_harness import Plane, Subscriber, wait_until

from tidings.api import keys
from tidings.dispatcher import deadletter, retention

DAY_MS = 24 * 3600 * 1000


def bad_request(request: web.Request) -> tuple[int, dict[str, str], float]:
    return 400, {}, 0.0


def old_dead_letter(trigger: str, event_id: str, when_ms: int) -> dict[str, str | int]:
    event = {"specversion": "1.0", "id": event_id, "source": "/t", "type": "com.example.test"}
    return {
        "event": json.dumps(event),
        "streamId": f"{when_ms - 1000}-0",
        "attempts": 1,
        "status": "400",
        "error": "400 is not in retryOn: HTTP 400: nope",
        "time": when_ms,
        "trigger": trigger,
    }


async def test_dead_letters_older_than_max_age_are_dropped_and_counted(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = bad_request
    await plane.add_source()
    await plane.dispatcher(retention_interval=0.2)
    route = await plane.add_trigger("t", subscriber.url)  # the default: 720h
    assert route.delivery.dead_letter_max_age == deadletter.MAX_AGE == 30 * 24 * 3600
    other = await plane.add_trigger(
        "other", subscriber.url, delivery={"deadLetterRetention": {"maxAge": "48h"}}
    )
    other_dlq = keys.dead_letters(plane.namespace, "src", "other")
    dlq = keys.dead_letters(plane.namespace, "src", "t")
    seconds, _ = await plane.redis.time()
    now_ms = seconds * 1000
    for n, age_days in enumerate([40, 31, 30.5, 29]):
        when = now_ms - int(age_days * DAY_MS)
        await plane.redis.xadd(dlq, old_dead_letter(route.id, f"old-{n}", when), id=f"{when}-0")
    three_days_ago = now_ms - 3 * DAY_MS
    await plane.redis.xadd(
        other_dlq, old_dead_letter(other.id, "old-other", three_days_ago), id=f"{three_days_ago}-0"
    )
    await plane.publish(2)

    async def old_ones_gone() -> bool:
        return int((await plane.state(route)).get(keys.STATE_DEAD_LETTERS_TRIMMED, 0)) >= 3

    await wait_until(old_ones_gone, 10, "the dispatcher's retention pass trimmed the DLQ")
    dead = await deadletter.read(plane.redis, plane.namespace, "src", "t")
    ids = sorted(d.event["id"] for d in dead)
    assert ids == ["e-0", "e-1", "old-3"]  # 29 days old stays; 30.5, 31, 40 go
    assert (await plane.state(route))[keys.STATE_DEAD_LETTERS_TRIMMED] == "3"
    # The other Trigger keeps 48 hours: its 3-day-old dead letter went, its new ones stay.
    await wait_until(
        lambda: deadletter_ids(plane, "other", {"e-0", "e-1"}), 10, "the other DLQ trimmed"
    )
    assert (await plane.state(other))[keys.STATE_DEAD_LETTERS_TRIMMED] == "1"
    # A second pass finds nothing more.
    assert (await retention.trim_dead_letters(plane.redis, [route, other])).lost == {}


async def deadletter_ids(plane: Plane, trigger: str, wanted: set[str]) -> bool:
    dead = await deadletter.read(plane.redis, plane.namespace, "src", trigger)
    return {d.event["id"] for d in dead} == wanted


async def test_the_dlq_keeps_exactly_the_newest_max_events(
    plane: Plane, subscriber: Subscriber
) -> None:
    subscriber.behaviour = bad_request
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger(
        # One at a time, so events are dead-lettered in stream order.
        "t",
        subscriber.url,
        delivery={"concurrency": 1, "deadLetterRetention": {"maxEvents": 50}},
    )
    await plane.publish(80)

    async def all_dead() -> bool:
        return int((await plane.state(route)).get(keys.STATE_DEAD_LETTERED, 0)) == 80

    await wait_until(all_dead, 20, "80 events dead-lettered")
    dlq = keys.dead_letters(plane.namespace, "src", "t")
    assert await plane.redis.xlen(dlq) == 50
    assert (await plane.state(route))[keys.STATE_DEAD_LETTERS_TRIMMED] == "30"
    kept = await deadletter.read(plane.redis, plane.namespace, "src", "t")
    assert {d.event["id"] for d in kept} == {f"e-{i}" for i in range(30, 80)}


async def test_the_dlq_keeps_the_newest_100000_dead_letters_by_default(
    plane: Plane, subscriber: Subscriber
) -> None:
    assert deadletter.MAX_EVENTS == 100_000
    subscriber.behaviour = bad_request
    await plane.add_source()
    await plane.dispatcher()
    route = await plane.add_trigger("t", subscriber.url)
    dlq = keys.dead_letters(plane.namespace, "src", "t")
    filler = old_dead_letter(route.id, "filler", 1)
    for _ in range(deadletter.MAX_EVENTS // 10_000):
        async with plane.redis.pipeline(transaction=False) as pipe:
            for _entry in range(10_000):
                pipe.xadd(dlq, filler)  # type: ignore[arg-type]
            await pipe.execute()
    assert await plane.redis.xlen(dlq) == deadletter.MAX_EVENTS
    await plane.publish(300)

    async def all_dead() -> bool:
        return int((await plane.state(route)).get(keys.STATE_DEAD_LETTERED, 0)) == 300

    await wait_until(all_dead, 20, "300 events dead-lettered")
    length = int(await plane.redis.xlen(dlq))
    assert length == deadletter.MAX_EVENTS
    trimmed = int((await plane.state(route))[keys.STATE_DEAD_LETTERS_TRIMMED])
    assert trimmed == 300
    newest = await plane.redis.xrevrange(dlq, count=300)
    events = {json.loads(fields[b"event"])["id"] for _, fields in newest}
    assert events == {f"e-{i}" for i in range(300)}
    await plane.redis.delete(dlq)  # 100,000 entries: not for the next tests to carry
